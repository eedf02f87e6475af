-- Invariant: cohort_not_activated_7d is exactly the profiled users with signup strictly inside
-- (end - max_days, end - min_days) and no event (read from the events themselves) in
-- [end - window, end). Returns the disagreements.
-- Shown in Dagster as an asset check of the cohort it verifies.
{{ config(meta={'dagster': {'ref': {'name': 'cohort_not_activated_7d'}}}) }}

{%- set window = nudge_window(nudge_int_var('not_activated_window_days', 1)) %}
{%- set end = nudge_as_of() %}

with

expected as (

    select users.user_id
    from {{ ref('dim_users') }} as users
    where users.signup_at > ({{ dbt.dateadd('day', -nudge_int_var('not_activated_max_days', 0), end) }})
        and users.signup_at < ({{ dbt.dateadd('day', -nudge_int_var('not_activated_min_days', 0), end) }})
        and not exists (
            select 1
            from {{ ref('stg_moesif__events') }} as events
            where events.user_id = users.user_id
                and events.requested_at >= {{ window.start }}
                and events.requested_at < {{ window.end }}
        )

),

cohort as (

    select entity_id as user_id from {{ ref('cohort_not_activated_7d') }}

)

select
    coalesce(expected.user_id, cohort.user_id) as user_id,
    case when cohort.user_id is null then 'missing from cohort' else 'not expected' end as problem
from expected
full outer join cohort on cohort.user_id = expected.user_id
where expected.user_id is null or cohort.user_id is null
