// Reload the page every data-refresh seconds (on <body>), keeping its scroll position.
(function () {
  "use strict";
  var key = "rackwatch-scroll:" + location.pathname + location.search;
  var seconds = Number(document.body.dataset.refresh);
  var saved = sessionStorage.getItem(key);
  if (saved !== null) {
    sessionStorage.removeItem(key);
    window.scrollTo(0, Number(saved));
  }
  if (seconds > 0) {
    setTimeout(function () {
      sessionStorage.setItem(key, String(window.scrollY));
      location.reload();
    }, seconds * 1000);
  }
})();
