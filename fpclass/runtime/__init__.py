"""What a job runs inside: per-backend process settings, sharding, timings, validation, the workdir lock and report writing."""
