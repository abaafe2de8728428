// asgireload live reload: the SharedWorker that holds the one stream of this origin for every tab.
var asgireloadPorts = [];
var asgireloadHello = null;
self.onconnect = function (connection) {
  "use strict";
  var port = connection.ports[0];
  asgireloadPorts.push(port);
  port.onmessage = function (message) {
    if (message.data === "bye") {
      asgireloadPorts = asgireloadPorts.filter(function (p) { return p !== port; });
    }
  };
  port.start();
  if (asgireloadHello) { port.postMessage(asgireloadHello); }
};
// Beside this script: "/__asgireload__/events", below the app's root path if any.
asgireloadStream(new URL("events", self.location.href).pathname, function (event) {
  "use strict";
  if (event.type === "hello") { asgireloadHello = event; }
  asgireloadPorts.forEach(function (port) { port.postMessage(event); });
}, function () {
  // The stream ended: that hello may be stale by the time a tab connects (a restart from scratch).
  asgireloadHello = null;
});
