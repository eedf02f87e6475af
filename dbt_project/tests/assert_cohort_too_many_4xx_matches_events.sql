-- Invariant: cohort_too_many_4xx_7d is exactly the users whose events (counted from the events
-- themselves, not the rollups) reach the threshold in [end - window, end), with those counts.
-- Returns the disagreements.
-- Shown in Dagster as an asset check of the cohort it verifies.
{{ config(meta={'dagster': {'ref': {'name': 'cohort_too_many_4xx_7d'}}}) }}

{%- set window = nudge_window(nudge_int_var('too_many_4xx_window_days', 1)) %}

with

counted as (

    select user_id, count(*) as calls_4xx
    from {{ ref('stg_moesif__events') }}
    where user_id is not null
        and status_code in ({{ nudge_status_list('too_many_4xx_statuses') }})
        and requested_at >= {{ window.start }}
        and requested_at < {{ window.end }}
    group by user_id
    having count(*) >= {{ nudge_int_var('too_many_4xx_threshold', 0) }}

),

cohort as (

    select entity_id as user_id, calls_4xx from {{ ref('cohort_too_many_4xx_7d') }}

)

select
    coalesce(counted.user_id, cohort.user_id) as user_id,
    counted.calls_4xx as calls_4xx_from_events,
    cohort.calls_4xx as calls_4xx_in_cohort
from counted
full outer join cohort on cohort.user_id = counted.user_id
where counted.user_id is null
    or cohort.user_id is null
    or counted.calls_4xx <> cohort.calls_4xx
