// A portal link carries its token after `#`, which no request sends: this script takes it
// from the address bar (and removes it there) and sends the form with it, once.
(function () {
  "use strict";
  var found = /[#&]token=([^&]+)/.exec(window.location.hash);
  var form = document.getElementById("portal-open");
  if (!found || !form) {
    return;
  }
  window.history.replaceState(null, "", window.location.pathname);
  form.elements.token.value = decodeURIComponent(found[1]);
  form.submit();
})();
