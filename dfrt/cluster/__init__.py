"""dfrt past one machine, on Ray (extra ``ray``): ``dfrt serve --ray`` and ``dfrt batch --ray``.

dfrt grows no scheduler of its own: Ray places the work. :mod:`~dfrt.cluster.placement` holds what a
worker asks of a node (CPUs, a GPU fraction, custom resources such as ``{"jetson": 1}``) and the replica
bounds; :mod:`~dfrt.cluster.connect` joins or starts a cluster; :mod:`~dfrt.cluster.batch` spreads a batch's
videos over a Ray Data actor pool; :mod:`~dfrt.cluster.deployments` and :mod:`~dfrt.cluster.serve` run the
OpenAI-compatible server as a Ray Serve application (an ingress, a visual-encoder deployment and an LLM
deployment, each scaled on its own). Nothing here is imported by :mod:`dfrt.runtime`. See
``docs/scale-out.md``.
"""
