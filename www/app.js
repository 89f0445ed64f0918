// The skill-sharing page: wires the name field, the new-talk form, the
// talk list and the connection status to the server.  See docs/client.md.

import { addComment, deleteTalk, proposeTalk, REREAD_EVENT } from "./api.js";
import { Follower } from "./follow.js";
import { TalkList } from "./talks.js";

const NAME_KEY = "talkserver.name";

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
  { author, comment: addComment, remove: deleteTalk },
  talkForm.elements.title,
);

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
