"""inv preflight: know, before a long model load, that every host can serve its part of
the planned PD deployment (docs/preflight.md).

``probe``   what to check on each host (:class:`~.probe.HostPlan`, from the start-pd plan)
            and the shell text of one round trip per host — pure
``checks``  the pure parsers of that output and the judges (ok / warn / fail per check,
            consistency across hosts) — pure
``run``     running it over SSH: one round trip per host, a `Report` of judged hosts
"""
