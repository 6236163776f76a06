"""Model monitoring: the capture sink (Redis Stream -> Parquet), drift, live accuracy, gauges.

The gateway writes capture records (``gateway.capture``) to a Redis Stream; this package reads
them (``sink``), stores them as Parquet partitioned by kind, date, model and version (``store``),
compares windows of them with a reference (``reference``, ``drift``), joins feedback to answers
(``accuracy``) and exports the results as Prometheus gauges (``exporter``) and reports
(``report``). It never imports the gateway's web stack: only its record format.
"""
