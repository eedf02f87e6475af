{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key='activity_date',
        on_schema_change='fail'
    )
}}

-- User x UTC day x verb x endpoint x status. Calls are first counted per raw path (query string
-- dropped), then paths are folded into endpoints, so normalization runs once per distinct path
-- of a user-day instead of once per event.

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

by_path as (

    select
        user_id,
        {{ dbt.cast('requested_at', 'date') }} as activity_date,
        verb,
        {{ nudge_uri_path('uri') }} as uri_path,
        status_code,
        count(*) as calls,
        max(ingested_at) as last_ingested_at

    from events
    group by 1, 2, 3, 4, 5

),

normalized as (

    select
        user_id,
        activity_date,
        verb,
        {{ nudge_endpoint('uri_path') }} as endpoint,
        status_code,
        calls,
        last_ingested_at

    from by_path

),

final as (

    select
        user_id,
        activity_date,
        verb,
        endpoint,
        status_code,
        {{ dbt.cast('sum(calls)', dbt.type_bigint()) }} as calls,
        max(last_ingested_at) as last_ingested_at

    from normalized
    group by user_id, activity_date, verb, endpoint, status_code

)

select * from final
