-- One row per campaign declared in the yml: its goal ('exit' or a goal model) and within_days.
{{ nudge_goal_settings() }}
