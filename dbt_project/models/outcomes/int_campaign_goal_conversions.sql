-- Every conversion instant of every campaign whose goal is a model (macros/nudge_goals.sql).
-- The shipped goal models, so that a hand-run `dbt build` builds them first:
-- depends_on: {{ ref('goal_first_successful_call') }}
-- depends_on: {{ ref('goal_4xx_resolved') }}
{{ nudge_goal_conversions() }}
