with

source as (

    select * from {{ source('raw', 'events') }}

),

renamed as (

    select
        event_key,
        transaction_id,
        request_time as requested_at,
        response_time as responded_at,
        user_id,
        company_id,
        session_token,
        upper(verb) as verb,
        uri,
        api_version,
        ip_address,
        status as status_code,
        direction,
        weight,
        blocked_by,
        tags,
        metadata,
        dt as landing_dt,
        source_file,
        source_line,
        ingested_at

    from source

)

select * from renamed
