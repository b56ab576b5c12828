// The live tail of the events page: events that arrive while it is open appear at the top
// of the table. The page reads the same without it.
(function () {
  "use strict";
  var table = document.querySelector("table[data-tail]");
  if (!table || !window.EventSource) {
    return;
  }
  var body = table.tBodies[0];
  // Events already on the page (the tail starts when the page was rendered).
  var shown = {};
  Array.prototype.forEach.call(body.querySelectorAll("a[href^='/ui/events/']"), function (a) {
    shown[a.textContent] = true;
  });
  var empty = document.getElementById("no-events");
  var source = new EventSource(table.getAttribute("data-tail"));
  source.addEventListener("events", function (message) {
    JSON.parse(message.data).forEach(function (e) {
      if (shown[e.id]) {
        return;
      }
      shown[e.id] = true;
      var row = body.insertRow(0);
      [e.at, e.type, e.source, e.pair, e.side, e.price].forEach(function (text) {
        row.insertCell().textContent = text === null || text === undefined ? "" : String(text);
      });
      var link = document.createElement("a");
      link.href = "/ui/events/" + encodeURIComponent(e.id);
      link.textContent = e.id;
      row.insertCell().appendChild(link);
      row.className = "fresh";
    });
    table.hidden = false;
    if (empty) {
      empty.hidden = true;
    }
  });
})();
