// The talks on the page, kept in step with the feed one talk at a time.
//
// Each talk is an <article> made once from a <template> and then updated
// in place, keyed by its title: a change never redraws the list, so a
// comment someone is typing keeps its text and its focus.  Everything from
// the server is inserted with textContent, never as markup.

let nextId = 1;

function fromTemplate(id) {
  return document.getElementById(id).content.firstElementChild.cloneNode(true);
}

function setText(element, text) {
  const value = String(text ?? "");
  if (element.textContent !== value) element.textContent = value;
}

function showError(slot, message) {
  slot.textContent = message;
  slot.hidden = !message;
}

const commentKey = (comment) => JSON.stringify([String(comment.author), String(comment.message)]);

/**
 * One talk's <article>.  `actions` has author() (the name to post as, or
 * null), comment(title, message), remove(title), mayDelete(owner) (whether
 * this browser may delete a talk with that owner tag), confirmDelete(title)
 * (a promise of the person's yes or no) and dismissed(view).
 */
class TalkView {
  constructor(talk, actions) {
    this.title = talk.title;
    this.actions = actions;
    this.gone = false;
    this.owner = undefined; // the owner tag the talk carries (with --protect-talks)
    const node = (this.node = fromTemplate("talk-template"));
    const $ = (selector) => node.querySelector(selector);
    this.heading = $(".talk-title");
    this.presenter = $(".presenter-name");
    this.summary = $(".summary");
    this.comments = $(".comments");
    this.form = $(".comment-form");
    this.input = this.form.elements.message;
    this.addButton = $(".comment-form button");
    this.error = $(".form-error");
    this.deleteButton = $(".delete-talk");
    this.dismissButton = $(".dismiss-talk");
    this.goneNote = $(".gone-note");

    const id = `talk-${nextId++}`;
    this.heading.id = id;
    node.setAttribute("aria-labelledby", id);
    node.tabIndex = -1;
    setText(this.heading, talk.title);

    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.#comment();
    });
    this.deleteButton.addEventListener("click", () => this.#delete());
    this.dismissButton.addEventListener("click", () => actions.dismissed(this));
    this.update(talk);
  }

  /** Show the talk's current presenter, summary and comments. */
  update(talk) {
    if (this.gone) this.#setGone(false);
    this.owner = talk.owner;
    this.showDelete();
    setText(this.presenter, talk.presenter);
    setText(this.summary, talk.summary);
    const comments = Array.isArray(talk.comments) ? talk.comments : [];
    const items = this.comments.children;
    // Comments are only ever appended (a replaced talk starts over), so
    // keep the shown ones that still match and add the rest.
    let kept = 0;
    while (kept < items.length && kept < comments.length && items[kept].dataset.key === commentKey(comments[kept])) {
      kept += 1;
    }
    while (items.length > kept) items[items.length - 1].remove();
    for (const comment of comments.slice(kept)) {
      const item = fromTemplate("comment-template");
      setText(item.querySelector(".author"), comment.author);
      setText(item.querySelector(".message"), comment.message);
      item.dataset.key = commentKey(comment);
      this.comments.append(item);
    }
  }

  /** Offer "Delete talk" only where this browser may delete (see docs/client.md). */
  showDelete() {
    this.deleteButton.hidden = this.gone || !this.actions.mayDelete(this.owner);
  }

  /**
   * The talk was deleted.  Returns true when the article is gone; an
   * article holding an unsent comment stays, marked deleted, until the
   * person dismisses it, so their text is not lost.
   */
  deleted() {
    if (this.input.value.trim()) {
      this.#setGone(true);
      return false;
    }
    this.node.remove();
    return true;
  }

  #setGone(gone) {
    this.gone = gone;
    this.node.classList.toggle("gone", gone);
    this.goneNote.hidden = !gone;
    this.addButton.disabled = gone;
    this.showDelete();
    this.dismissButton.hidden = !gone;
    if (gone) showError(this.error, "");
  }

  async #comment() {
    const message = this.input.value;
    const author = this.actions.author();
    if (author === null) {
      showError(this.error, "Please enter your name at the top first.");
      return;
    }
    if (!message.trim()) {
      showError(this.error, "Write a comment first.");
      return;
    }
    this.addButton.disabled = true;
    try {
      await this.actions.comment(this.title, author, message);
      showError(this.error, "");
      // Keep anything typed while the comment was on its way.
      if (this.input.value === message) this.input.value = "";
    } catch (error) {
      showError(this.error, error.outcomeUnknown
        ? "The server could not tell whether your comment was added; the list shows it if it was."
        : `Your comment was not added: ${error.message}`);
    } finally {
      this.addButton.disabled = this.gone;
    }
  }

  async #delete() {
    if (!(await this.actions.confirmDelete(this.title))) return;
    this.deleteButton.disabled = true;
    try {
      await this.actions.remove(this.title);
      showError(this.error, "");
    } catch (error) {
      showError(this.error, error.outcomeUnknown
        ? "The server could not tell whether the talk was deleted; the list shows it once it knows."
        : `The talk was not deleted: ${error.message}`);
    } finally {
      this.deleteButton.disabled = false;
    }
  }
}

/** The list of talks: applies the feed's answers to the page. */
export class TalkList {
  #shown = new Map(); // title -> TalkView, in page order
  #list;
  #emptyNote;
  #actions;
  #fallbackFocus;

  /**
   * `list` holds the articles, `emptyNote` shows when there are none,
   * `actions` is as for TalkView (less dismissed), and `fallbackFocus` gets
   * the focus when the talk holding it disappears and no other talk is left.
   */
  constructor(list, emptyNote, actions, fallbackFocus) {
    this.#list = list;
    this.#emptyNote = emptyNote;
    this.#actions = { ...actions, dismissed: (view) => this.#drop(view) };
    this.#fallbackFocus = fallbackFocus;
  }

  /** Show or hide each talk's "Delete talk" again: this browser's owner tag may have changed. */
  refreshOwnership() {
    for (const view of this.#shown.values()) view.showDelete();
  }

  /** Apply talks from one answer; `replace` means they are the complete list. */
  apply(talks, replace) {
    const present = new Set();
    for (const talk of talks) {
      if (typeof talk?.title !== "string") continue;
      present.add(talk.title);
      if (talk.deleted) this.#delete(talk.title);
      else this.#show(talk);
    }
    if (replace) {
      for (const [title, view] of [...this.#shown]) {
        if (!present.has(title) && !view.gone) this.#delete(title);
      }
    }
    this.#emptyNote.hidden = [...this.#shown.values()].some((view) => !view.gone);
  }

  #show(talk) {
    const view = this.#shown.get(talk.title);
    if (view) {
      view.update(talk);
    } else {
      const created = new TalkView(talk, this.#actions);
      this.#shown.set(talk.title, created);
      this.#list.append(created.node);
    }
  }

  #delete(title) {
    const view = this.#shown.get(title);
    if (!view || view.gone) return;
    const hadFocus = view.node.contains(document.activeElement);
    const neighbour = view.node.nextElementSibling || view.node.previousElementSibling;
    if (view.deleted()) {
      this.#shown.delete(title);
      if (hadFocus) (neighbour || this.#fallbackFocus).focus();
    }
  }

  #drop(view) {
    const neighbour = view.node.nextElementSibling || view.node.previousElementSibling;
    view.node.remove();
    this.#shown.delete(view.title);
    (neighbour || this.#fallbackFocus).focus();
    this.#emptyNote.hidden = [...this.#shown.values()].some((v) => !v.gone);
  }
}
