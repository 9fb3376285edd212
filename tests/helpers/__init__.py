"""What the tests share: tiny models and data (`tiny.py`), multi-rank launches (`launch.py`,
`step_probe.py`) and Trainer callbacks (`callbacks.py`). Import as `tests.helpers.<module>`."""
