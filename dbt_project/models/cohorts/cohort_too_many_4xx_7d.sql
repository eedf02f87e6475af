-- Users with at least `too_many_4xx_threshold` calls answered with a status in
-- `too_many_4xx_statuses`, with time in [end - too_many_4xx_window_days, end).
-- Whole UTC days come from fct_user_daily_endpoint_status, the partial days at the window's two
-- edges (when `end` is not a midnight) from the events themselves: exact, and cheap.

{%- set window = nudge_window(nudge_int_var('too_many_4xx_window_days', 1)) %}
{%- set statuses = nudge_status_list('too_many_4xx_statuses') %}
{%- set threshold = nudge_int_var('too_many_4xx_threshold', 0) %}
{%- set top_n = nudge_int_var('top_failing_endpoints_limit', 0) %}

with

full_days as (

    select user_id, verb, endpoint, status_code, calls
    from {{ ref('fct_user_daily_endpoint_status') }}
    where status_code in ({{ statuses }})
        and {{ nudge_in_window_full_days('activity_date', window) }}

),

edge_days as (

    select user_id, verb, endpoint, status_code, count(*) as calls
    from {{ ref('int_events_endpoints') }}
    where user_id is not null
        and status_code in ({{ statuses }})
        and {{ nudge_in_window_edges('requested_at', window) }}
    group by user_id, verb, endpoint, status_code

),

failing_calls as (

    select
        user_id,
        verb,
        endpoint,
        status_code,
        {{ dbt.cast('sum(calls)', dbt.type_bigint()) }} as calls

    from (
        select * from full_days
        union all
        select * from edge_days
    ) as window_parts
    group by user_id, verb, endpoint, status_code

),

members as (

    select
        user_id,
        {{ dbt.cast('sum(calls)', dbt.type_bigint()) }} as calls_4xx

    from failing_calls
    group by user_id
    having sum(calls) >= {{ threshold }}

),

ranked_endpoints as (

    select
        failing_calls.*,
        row_number() over (
            partition by failing_calls.user_id
            order by
                calls desc,
                status_code,
                {{ nudge_bytewise('endpoint') }},
                {{ nudge_bytewise('verb') }}
        ) as endpoint_rank

    from failing_calls
    inner join members on members.user_id = failing_calls.user_id

),

endpoint_json as (

    select
        user_id,
        endpoint_rank,
        '{"verb":' || {{ nudge_json_string('verb') }}
            || ',"endpoint":' || {{ nudge_json_string('endpoint') }}
            || ',"status":' || coalesce({{ dbt.cast('status_code', dbt.type_string()) }}, 'null')
            || ',"calls":' || {{ dbt.cast('calls', dbt.type_string()) }}
            || '}' as endpoint_object

    from ranked_endpoints
    where endpoint_rank <= {{ top_n }}

),

top_endpoints as (

    select
        user_id,
        '[' || {{ dbt.listagg('endpoint_object', "','", 'order by endpoint_rank') }} || ']'
            as top_failing_endpoints_json

    from endpoint_json
    group by user_id

),

users as (

    select * from {{ ref('dim_users') }}

),

companies as (

    select * from {{ ref('dim_companies') }}

),

final as (

    select
        members.user_id as entity_id,
        users.email,
        users.first_name,
        users.last_name,
        users.company_id,
        companies.company_domain,
        companies.solutions_engineer_email as cc,
        members.calls_4xx,
        coalesce(top_endpoints.top_failing_endpoints_json, '[]') as top_failing_endpoints_json,
        {{ window.start }} as window_start,
        {{ window.end }} as window_end

    from members
    left join users on users.user_id = members.user_id
    left join companies on companies.company_id = users.company_id
    left join top_endpoints on top_endpoints.user_id = members.user_id

)

select * from final
