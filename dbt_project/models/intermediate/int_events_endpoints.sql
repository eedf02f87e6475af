-- Events with their normalized endpoint (rules in macros/nudge_endpoint.sql). A view: readers
-- filter by time first, so only the rows they read are normalized.

with

events as (

    select * from {{ ref('stg_moesif__events') }}

),

normalized as (

    select
        event_key,
        requested_at,
        user_id,
        company_id,
        verb,
        uri,
        {{ nudge_endpoint('uri') }} as endpoint,
        status_code,
        ingested_at

    from events

)

select * from normalized
