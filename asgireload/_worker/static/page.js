// asgireload live reload, in the page. Injected by the development server on loopback only;
// `asgireload --no-live-reload` turns it off. It follows the server's generations: when a newer
// one serves (or asgireload itself was restarted), the page reloads once, keeping its scroll
// position; a changed stylesheet is re-fetched in place.
(function () {
  "use strict";
  var me = document.currentScript;
  if (!me || window.asgireloadLive) { return; }
  // A frame of a page from this server: that page reloads, and the frame with it.
  try { if (window !== window.top && window.top.location.origin === location.origin) { return; } } catch (e) { /* another origin */ }
  window.asgireloadLive = {events: 0, styles: 0};
  var run = me.getAttribute("data-run");
  var generation = parseInt(me.getAttribute("data-generation"), 10);
  // The error page neither restores nor saves the scroll: the page it stands in for keeps it.
  var errorPage = me.getAttribute("data-error") === "1";
  var loadedAt = Date.now();
  // The folder of this script's own URL: "/__asgireload__/", below the app's root path if any.
  var base = new URL(".", me.src).pathname;
  var page = location.pathname + location.search;
  var storage = null;
  try { storage = window.sessionStorage; } catch (e) { storage = null; }

  function remember(key, value) {
    if (storage) { try { storage.setItem("asgireload:" + key + ":" + page, value); } catch (e) { /* full */ } }
  }
  function recall(key) {
    if (!storage) { return null; }
    var value = storage.getItem("asgireload:" + key + ":" + page);
    storage.removeItem("asgireload:" + key + ":" + page);
    return value;
  }

  // Reload once per target: a page that comes back still older (a cache) does not loop.
  var tried = recall("target");
  // At most one reload a second: an app that writes a watched asset itself (each request, or
  // each start) would otherwise reload its pages in a loop.
  var lastReload = parseInt(recall("reloaded") || "0", 10) || 0;
  var pending = null;
  function reload(target) {
    if (tried === target) { return; }
    tried = target;
    var wait = Math.max(lastReload, loadedAt - 1000) + 1000 - Date.now();
    if (pending !== null) { clearTimeout(pending); }
    pending = setTimeout(function () {
      remember("target", target);
      remember("reloaded", String(Date.now()));
      if (!errorPage) { remember("scroll", JSON.stringify([window.scrollX, window.scrollY])); }
      location.reload();
    }, Math.max(wait, 0));
  }

  var scroll = errorPage ? null : recall("scroll");
  if (scroll) {
    var position = null;
    try { position = JSON.parse(scroll); } catch (e) { position = null; }
    if (position) {
      var restore = function () { window.scrollTo(position[0], position[1]); };
      restore();
      if (document.readyState !== "complete") { window.addEventListener("load", restore, {once: true}); }
    }
  }

  function baseName(path) {
    return path.split("/").pop();
  }
  function swapStylesheets(files) {
    var names = files.map(baseName);
    var links = Array.prototype.slice.call(document.querySelectorAll('link[rel~="stylesheet"][href]'));
    var matching = links.filter(function (link) {
      return names.indexOf(baseName(new URL(link.href, location.href).pathname)) >= 0;
    });
    (matching.length ? matching : links).forEach(function (link) {
      var url = new URL(link.href, location.href);
      window.asgireloadLive.styles += 1;
      url.searchParams.set("asgireload", Date.now().toString(36) + "." + window.asgireloadLive.styles);
      var fresh = link.cloneNode(false);
      fresh.href = url.href;
      var drop = function () { if (link.parentNode) { link.parentNode.removeChild(link); } };
      fresh.addEventListener("load", drop, {once: true});
      fresh.addEventListener("error", drop, {once: true});
      link.parentNode.insertBefore(fresh, link.nextSibling);
    });
  }

  function handle(event) {
    window.asgireloadLive.events += 1;
    if (event.type === "hello") {
      if (event.run !== run || event.generation > generation) {
        reload(event.run + ":" + event.generation);
      }
    } else if (event.type === "css") {
      swapStylesheets(event.files || []);
    } else if (event.type === "reload") {
      reload(run + ":" + generation + ":" + event.id);
    }
  }

  // One stream per origin, whatever the number of tabs: a SharedWorker holds it; where there is
  // none (or the page's policy forbids it), the tab that holds a lock holds it and shares it over a
  // BroadcastChannel; failing both, each tab opens its own.
  function viaSharedWorker() {
    if (me.getAttribute("data-worker") !== "1" || typeof SharedWorker !== "function") { return false; }
    try {
      var version = new URL(me.src, location.href).searchParams.get("v") || "";
      var worker = new SharedWorker(base + "worker.js?v=" + encodeURIComponent(version), {name: "asgireload"});
      worker.port.onmessage = function (message) { handle(message.data); };
      // A worker that fails later (its script blocked or broken) falls back to the other ways.
      worker.onerror = function () {
        worker.onerror = null;
        if (!viaLeader()) { asgireloadStream(base + "events", handle); }
      };
      worker.port.start();
      window.addEventListener("pagehide", function () { worker.port.postMessage("bye"); });
      return true;
    } catch (e) {
      return false;
    }
  }
  function viaLeader() {
    if (typeof BroadcastChannel !== "function" || !navigator.locks) { return false; }
    var channel = new BroadcastChannel("asgireload");
    var leading = false;
    var hello = null;
    channel.onmessage = function (message) {
      if (message.data === "hello?") {
        if (leading && hello) { channel.postMessage(hello); }
      } else {
        handle(message.data);
      }
    };
    navigator.locks.request("asgireload-stream", function () {
      leading = true;
      return new Promise(function () {
        asgireloadStream(base + "events", function (event) {
          if (event.type === "hello") { hello = event; }
          channel.postMessage(event);
          handle(event);
        });
      });
    });
    channel.postMessage("hello?");
    return true;
  }
  if (!viaSharedWorker() && !viaLeader()) {
    asgireloadStream(base + "events", handle);
  }
})();
