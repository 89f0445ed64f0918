// A test page that talks to the server the way the skill-sharing client of
// Eloquent JavaScript's 3rd and 4th editions does: a plain GET /talks, then
// GET /talks with If-None-Match and "Prefer: wait=90" in a loop (a 304 means
// ask again at once, a failure means wait half a second), and JSON writes.
// Written for talkserver's tests; it is not the book's code.
"use strict";

const userName = () => localStorage.getItem("name") || "Anonymous";

async function send(path, options) {
  const response = await fetch(path, options);
  if (response.status >= 400) throw new Error(`${response.status} ${response.statusText}`);
  return response;
}

function write(method, path, body) {
  const options = {method};
  if (body) {
    options.headers = {"Content-Type": "application/json"};
    options.body = JSON.stringify(body);
  }
  send(path, options).catch(error => alert(String(error)));
}

const talkPath = title => "talks/" + encodeURIComponent(title);

function node(tag, properties, ...children) {
  const element = Object.assign(document.createElement(tag), properties);
  element.append(...children);
  return element;
}

function talkNode(talk) {
  const comment = node("input", {type: "text", name: "comment"});
  comment.setAttribute("aria-label", "Comment");
  const form = node("form", {}, comment, node("button", {type: "submit"}, "Add comment"));
  form.addEventListener("submit", event => {
    event.preventDefault();
    write("POST", talkPath(talk.title) + "/comments", {author: userName(), message: comment.value});
    form.reset();
  });
  const remove = node("button", {type: "button"}, "Delete");
  remove.addEventListener("click", () => write("DELETE", talkPath(talk.title)));
  const section = node(
    "section", {className: "talk"},
    node("h2", {}, talk.title, " ", remove),
    node("div", {}, "by ", node("strong", {}, talk.presenter)),
    node("p", {}, talk.summary),
    ...talk.comments.map(c => node("p", {className: "comment"}, node("strong", {}, c.author), ": ", c.message)),
    form);
  section.setAttribute("aria-label", talk.title);
  return section;
}

function proposalForm() {
  const title = node("input", {type: "text"});
  const summary = node("input", {type: "text"});
  const form = node("form", {},
    node("h3", {}, "Submit a Talk"),
    node("label", {}, "Title: ", title),
    node("label", {}, "Summary: ", summary),
    node("button", {type: "submit"}, "Submit"));
  form.addEventListener("submit", event => {
    event.preventDefault();
    write("PUT", talkPath(title.value), {presenter: userName(), summary: summary.value});
    form.reset();
  });
  return form;
}

async function follow(show) {
  let tag;
  for (;;) {
    let response;
    try {
      response = await send("/talks", {headers: tag ? {"If-None-Match": tag, "Prefer": "wait=90"} : {}});
    } catch (error) {
      await new Promise(resolve => setTimeout(resolve, 500));
      continue;
    }
    if (response.status == 304) continue;
    tag = response.headers.get("ETag");
    show(await response.json());
  }
}

const name = node("input", {type: "text", value: userName()});
name.addEventListener("change", () => localStorage.setItem("name", name.value));
const talks = node("div", {className: "talks"});
document.body.append(node("label", {}, "Your name: ", name), talks, proposalForm());
follow(list => talks.replaceChildren(...list.map(talkNode))).catch(error => alert(String(error)));
