"""MoE analysis: text windows for calibration and evaluation, routing and router
fitting, the checks of verify, quality limits and the report."""
