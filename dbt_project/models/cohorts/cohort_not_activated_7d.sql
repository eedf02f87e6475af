-- Users who signed up strictly between `end - not_activated_max_days` and
-- `end - not_activated_min_days` and made no call with time in
-- [end - not_activated_window_days, end). Whole UTC days come from fct_user_daily_activity, the
-- partial days at the window's edges (when `end` is not a midnight) from the events themselves.

{%- set window = nudge_window(nudge_int_var('not_activated_window_days', 1)) %}
{%- set min_days = nudge_int_var('not_activated_min_days', 0) %}
{%- set max_days = nudge_int_var('not_activated_max_days', 0) %}

with

users as (

    select * from {{ ref('dim_users') }}

),

signed_up as (

    select *
    from users
    where signup_at > ({{ dbt.dateadd('day', -max_days, window.end) }})
        and signup_at < ({{ dbt.dateadd('day', -min_days, window.end) }})

),

active_full_days as (

    select user_id
    from {{ ref('fct_user_daily_activity') }}
    where {{ nudge_in_window_full_days('activity_date', window) }}

),

active_edge_days as (

    select user_id
    from {{ ref('stg_moesif__events') }}
    where user_id is not null
        and {{ nudge_in_window_edges('requested_at', window) }}

),

active as (

    select user_id from active_full_days
    union
    select user_id from active_edge_days

),

final as (

    select
        signed_up.user_id as entity_id,
        signed_up.email,
        signed_up.first_name,
        signed_up.last_name,
        signed_up.company_id,
        signed_up.signup_at,
        {{ dbt.cast(
            'floor(' ~ dbt.datediff('signed_up.signup_at', window.end, 'second') ~ ' / 86400.0)',
            dbt.type_int()) }} as days_since_signup,
        {{ window.start }} as window_start,
        {{ window.end }} as window_end

    from signed_up
    left join active on active.user_id = signed_up.user_id
    where active.user_id is null

)

select * from final
