{{
    config(
        materialized='incremental',
        on_schema_change='fail',
        **nudge_incremental_by_day('event_date')
    )
}}

-- Event volume per UTC hour over all events (with or without a user), for monitoring and the
-- freshness guard. Incremental like the daily rollups.

with

events as (

    select * from {{ ref('stg_moesif__events') }}
    {% if is_incremental() %}
    where {{ dbt.cast('requested_at', 'date') }} in (
        {{ nudge_touched_days(ref('stg_moesif__events'), 'requested_at') }}
    )
    {% endif %}

),

hourly as (

    select
        {{ dbt.date_trunc('hour', 'requested_at') }} as event_hour,
        count(*) as events,
        count(case when user_id is not null then 1 end) as events_with_user,
        count(case when status_code between 400 and 499 then 1 end) as calls_4xx,
        count(case when status_code between 500 and 599 then 1 end) as calls_5xx,
        max(ingested_at) as last_ingested_at

    from events
    group by 1

),

final as (

    select
        event_hour,
        {{ dbt.cast('event_hour', 'date') }} as event_date,
        events,
        events_with_user,
        calls_4xx,
        calls_5xx,
        last_ingested_at

    from hourly

)

select * from final
