"""`edgetl search`: the most accurate model that fits a device's budget.

space (what can be tried) -> measure (latency, size, memory of each architecture, before any
training) -> halving (cheap head-only candidates first, phase 2 for the best) -> front (Pareto
front and the pick, on validation) -> report (table, plot, why each candidate lost). The
driver is :func:`edgetl.search.run.search`."""
