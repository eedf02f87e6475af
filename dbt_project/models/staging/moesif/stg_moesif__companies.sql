with

source as (

    select * from {{ source('raw', 'companies') }}

),

renamed as (

    select
        company_id,
        company_domain,
        modified_time as modified_at,
        solutions_engineer_email,
        plan,
        metadata,
        source_file,
        source_line,
        ingested_at

    from source

)

select * from renamed
