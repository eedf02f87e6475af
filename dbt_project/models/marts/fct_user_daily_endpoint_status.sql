{{
    config(
        materialized='incremental',
        on_schema_change='fail',
        **nudge_incremental_by_day('activity_date')
    )
}}

-- User x UTC day x verb x endpoint x status. Calls are first counted per raw path (query string
-- dropped), then each distinct path is folded into its endpoint once (7x fewer regex passes
-- than once per user-day and path on the benchmark's data) and joined back.

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

paths as (

    select distinct uri_path from by_path

),

endpoints as (

    select
        uri_path,
        {{ nudge_endpoint('uri_path') }} as endpoint

    from paths

),

normalized as (

    select
        by_path.user_id,
        by_path.activity_date,
        by_path.verb,
        endpoints.endpoint,
        by_path.status_code,
        by_path.calls,
        by_path.last_ingested_at

    from by_path
    -- A null path has no endpoint (and joins nothing), as nudge_endpoint(null) is null.
    left join endpoints on endpoints.uri_path = by_path.uri_path

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
