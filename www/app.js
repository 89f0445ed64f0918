// The skill-sharing page: wires the name field, the new-talk form, the
// talk list and the connection status to the server.  See docs/client.md.

import { addComment, deleteTalk, proposeTalk, REREAD_EVENT } from "./api.js";
import { Follower } from "./follow.js";
import { TalkList } from "./talks.js";

const NAME_KEY = "talkserver.name";
// Set by the server with --protect-talks: the public tag of this browser,
// which the talks it owns carry as "owner" (see docs/client.md).
const OWNER_TAG_COOKIE = "talkserver_owner_tag";

const nameField = document.getElementById("name");
const talkForm = document.getElementById("new-talk");
const talkError = talkForm.querySelector(".form-error");
const statusLine = document.getElementById("status");
const retryButton = document.getElementById("retry");

// -- your name: remembered across reloads -----------------------------------

function storedName() {
  try {
    return localStorage.getItem(NAME_KEY) || "";
  } catch (_) {
    return ""; // storage can be switched off; the page works without it
  }
}

nameField.value = storedName();
nameField.addEventListener("input", () => {
  try {
    localStorage.setItem(NAME_KEY, nameField.value);
  } catch (_) { /* not remembered, still used */ }
});

/** The name to post as, or null (and the name field focused) when there is none. */
function author() {
  const name = nameField.value.trim();
  if (name) return name;
  nameField.focus();
  return null;
}

// -- which talks this browser may delete ---------------------------------------

function ownerTag() {
  for (const pair of document.cookie.split(";")) {
    const [name, ...value] = pair.trim().split("=");
    if (name === OWNER_TAG_COOKIE) return value.join("=");
  }
  return "";
}

let askedForTag = false; // once per page load: a server without --protect-talks sets none

/** Ask the server for this browser's owner tag cookie, then show Delete where it now may. */
async function learnOwnerTag() {
  if (askedForTag) return;
  askedForTag = true;
  try {
    await fetch(".", { method: "HEAD", cache: "no-store" });
  } catch (_) { /* the next page load brings it */ }
  talks.refreshOwnership();
}

/** A talk with no owner is anyone's to delete; an owned one only its owner's. */
function mayDelete(owner) {
  return !owner || owner === ownerTag();
}

// -- asking before a delete ------------------------------------------------------

const confirmDialog = document.getElementById("confirm-delete");

/** Ask in a modal dialog whether to delete `title`; resolves true for "Delete". */
function confirmDelete(title) {
  confirmDialog.querySelector(".confirm-title").textContent = title;
  confirmDialog.returnValue = "";
  confirmDialog.showModal();
  return new Promise((resolve) => {
    confirmDialog.addEventListener("close", () => resolve(confirmDialog.returnValue === "delete"), { once: true });
  });
}

// -- proposing a talk ------------------------------------------------------

function showTalkError(message) {
  talkError.textContent = message;
  talkError.hidden = !message;
}

talkForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const fields = talkForm.elements;
  const title = fields.title.value.trim();
  const summary = fields.summary.value;
  // Browsers collapse "." and ".." out of URL paths, so no request could
  // ever name such a talk.
  if (/^\.{1,2}$/.test(title)) {
    showTalkError("A title cannot be just dots.");
    return;
  }
  const presenter = author();
  if (presenter === null) {
    showTalkError("Please enter your name first.");
    return;
  }
  const button = talkForm.querySelector("button[type=submit]");
  button.disabled = true;
  try {
    await proposeTalk(title, presenter, summary);
    // A first proposal makes this browser an owner: the page's own files
    // bring it its readable owner tag (see docs/client.md).
    if (!ownerTag()) await learnOwnerTag();
    showTalkError("");
    // Clear only what was sent: a field edited meanwhile keeps its new text.
    if (fields.title.value.trim() === title) fields.title.value = "";
    if (fields.summary.value === summary) fields.summary.value = "";
  } catch (error) {
    // The typed title and summary stay, ready for another try.
    showTalkError(error.outcomeUnknown
      ? "The server could not tell whether your talk was proposed; the list shows it if it was."
      : `Your talk was not proposed: ${error.message}`);
  } finally {
    button.disabled = false;
  }
});

// -- the talk list and the live feed -----------------------------------------

const talks = new TalkList(
  document.getElementById("talk-list"),
  document.getElementById("no-talks"),
  { author, comment: addComment, remove: deleteTalk, mayDelete, confirmDelete },
  talkForm.elements.title,
);

// "Connecting…" (the page's first words) until the first board is drawn:
// the follower says live() only once it has applied an answer.
const status = {
  set(text, retrying) {
    if (statusLine.textContent !== text) statusLine.textContent = text;
    statusLine.classList.toggle("live", !retrying && text === "Live");
    retryButton.hidden = !retrying;
  },
  live() {
    this.set("Live", false);
  },
  retryingIn(ms, message) {
    const next = `Reconnecting: next try in ${Math.max(1, Math.round(ms / 1000))} s`;
    this.set(message ? `${next}. The server said: ${message}` : next, true);
  },
  trying() {
    this.set("Reconnecting: trying now…", true);
  },
};

const follower = new Follower((list, replace) => talks.apply(list, replace), status);
retryButton.addEventListener("click", () => follower.retryNow());
window.addEventListener("online", () => follower.retryNow());
// A write whose outcome is unknown: ask the server now rather than after a back-off.
window.addEventListener(REREAD_EVENT, () => follower.retryNow());
follower.run();
