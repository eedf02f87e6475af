with

source as (

    select * from {{ source('raw', 'users') }}

),

renamed as (

    select
        user_id,
        company_id,
        modified_time as modified_at,
        email,
        first_name,
        last_name,
        created as created_at,
        metadata,
        source_file,
        source_line,
        ingested_at

    from source

)

select * from renamed
