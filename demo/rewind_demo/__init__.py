"""Local stand-ins for what the demo and tests lack: model servers, Istio's data plane, scraping.

The sandbox runs a real API server with fake pods (kwok) and a real Prometheus but no mesh,
so these pieces produce the traffic and the Istio-shaped metrics the policies query.

With the demo itself (:mod:`rewind_demo.demo`), they are not the operator: a distribution of
their own (demo/pyproject.toml) that the image does not install and `rewind` never imports.
"""
