{{
    config(
        materialized='incremental',
        on_schema_change='fail',
        **nudge_incremental_by_day('activity_date')
    )
}}

-- User x UTC day with at least one call. Incremental: the days touched by newly ingested events
-- are recomputed whole (macros/nudge_incremental.sql).

with

events as (

    select * from {{ ref('stg_moesif__events') }}
    where user_id is not null
    {% if is_incremental() %}
        and {{ dbt.cast('requested_at', 'date') }} in (
            {{ nudge_touched_days(ref('stg_moesif__events'), 'requested_at') }}
        )
    {% endif %}

),

daily as (

    select
        user_id,
        {{ dbt.cast('requested_at', 'date') }} as activity_date,
        max({{ nudge_bytewise('company_id') }}) as company_id,
        count(*) as api_calls,
        {%- for label, low, high in [('2xx', 200, 299), ('3xx', 300, 399), ('4xx', 400, 499), ('5xx', 500, 599)] %}
        count(case when status_code between {{ low }} and {{ high }} then 1 end) as calls_{{ label }},
        {%- endfor %}
        {%- for status in [400, 401, 403, 404, 405, 409, 422, 429] %}
        count(case when status_code = {{ status }} then 1 end) as calls_{{ status }},
        {%- endfor %}
        min(requested_at) as first_call_at,
        max(requested_at) as last_call_at,
        max(ingested_at) as last_ingested_at

    from events
    group by 1, 2

)

select * from daily
