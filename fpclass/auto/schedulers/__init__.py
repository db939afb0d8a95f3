"""How `--mode auto` spends its search seconds: one scheduler per module, behind one small interface
(`scheduler.Scheduler`), chosen by config.auto.scheduler from `configured.SCHEDULERS`."""
