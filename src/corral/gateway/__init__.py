"""The gateway: routing, load balancing, health and the HTTP data plane.

    load_gateway_config(path)            → GatewayConfig (ManifestError lists every problem)
    validate_gateway_data(data, mode=…)  → GatewayConfig from parsed data ("platform" allows
                                           ``service:`` targets, "standalone" requires upstreams)
    compile_routes(config, version)      → RouteTable (immutable; swap it with Gateway.apply)
    Gateway(table, limits, rng=…)        → one worker's data plane; ``await gw.listen(host, port)``
    gw.set_endpoints(service, [(addr, weight)])   platform mode: a service's `run` instances
    gw.set_unhealthy({cluster: [addr]})           active-check results
    serve(config_path)                   → standalone mode (``corral gateway serve``)

Pure cores (no I/O, time passed in): ``router``, ``lb``, ``outlier``, ``retry``, ``framing``,
``metrics``. Adapters: ``proxy``, ``healthcheck``, ``serve``.
"""

from corral.compiled import use_compiled

# The request path compiled with mypyc when a current build exists (corral/compiled.py).
COMPILED = use_compiled(__name__, __path__)
