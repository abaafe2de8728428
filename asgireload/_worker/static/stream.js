// asgireload live reload: one event stream, reopened as soon as the server ends it.
// The server ends it when its generation drains; the next request reaches the new one at once.
// While the server is away (restarting), it retries with a growing delay, up to two seconds.
function asgireloadStream(url, deliver, ended) {
  "use strict";
  var failures = 0;
  var quickEnds = 0;
  function retry(delay) {
    setTimeout(connect, delay);
  }
  function connect() {
    var opened = Date.now();
    fetch(url, {cache: "no-store", credentials: "same-origin", headers: {"Accept": "text/event-stream"}})
      .then(function (response) {
        if (!response.ok || !response.body) {
          throw new Error("asgireload: event stream answered " + response.status);
        }
        failures = 0;
        var reader = response.body.getReader();
        var decoder = new TextDecoder();
        var buffer = "";
        function pump() {
          return reader.read().then(function (chunk) {
            if (chunk.done) {
              if (ended) { ended(); }
              // A clean end: the generation drains. Reconnect now, unless that keeps happening.
              quickEnds = Date.now() - opened < 1000 ? quickEnds + 1 : 0;
              retry(quickEnds > 3 ? Math.min(100 * quickEnds, 2000) : 0);
              return;
            }
            buffer += decoder.decode(chunk.value, {stream: true});
            var blocks = buffer.split("\n\n");
            buffer = blocks.pop();
            blocks.forEach(function (block) {
              block.split("\n").forEach(function (line) {
                if (line.indexOf("data: ") === 0) {
                  var event = null;
                  try { event = JSON.parse(line.slice(6)); } catch (e) { event = null; }
                  if (event) { deliver(event); }
                }
              });
            });
            return pump();
          });
        }
        return pump();
      })
      .catch(function () {
        if (ended) { ended(); }
        failures += 1;
        retry(Math.min(100 * Math.pow(2, failures - 1), 2000));
      });
  }
  connect();
}
