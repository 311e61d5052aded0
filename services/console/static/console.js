// Switchyard console: refresh the parts of a page marked data-poll="URL" every data-interval ms.
// A 401 (session over) stops polling; a network error keeps the last content and retries.
(function () {
  function poll(el) {
    var url = el.getAttribute("data-poll");
    var every = parseInt(el.getAttribute("data-interval") || "3000", 10);
    function tick() {
      fetch(url, { credentials: "same-origin", headers: { "X-Requested-With": "poll" } })
        .then(function (r) {
          if (r.status === 401) { return null; }
          if (!r.ok) { throw new Error(r.status); }
          return r.text();
        })
        .then(function (html) {
          if (html === null) { return; }
          el.innerHTML = html;
          setTimeout(tick, every);
        })
        .catch(function () { setTimeout(tick, every); });
    }
    setTimeout(tick, every);
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-poll]").forEach(poll);
  });
})();
