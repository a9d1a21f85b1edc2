"""The i-PI engine: mlip_md as an i-PI socket client ("driver").

* :mod:`.client` -- :class:`~.client.Driver` (answers i-PI's requests with an evaluator's
  predictions) and :func:`~.client.serve` (the exit codes of ``mlip-md ipi``);
* :mod:`.connection` -- :class:`~.connection.SocketClient`, the socket with its watchdog;
* :mod:`.wire` -- the byte-level codec (C++, atomic units on the wire);
* :mod:`.server` -- running a real ``i-pi`` server next to the driver (demo, tests, benchmarks);
* :mod:`.launch` -- :func:`~.launch.run_driver`: one driver process (``mlip-md ipi``) assembled from
  :class:`~.launch.DriverOptions`: the evaluator, the socket, the monitor rules.
"""
