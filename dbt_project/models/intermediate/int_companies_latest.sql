-- One row per company: the newest profile version (by modified_time) wins.

with

versions as (

    select * from {{ ref('stg_moesif__companies') }}

),

ranked as (

    select
        *,
        row_number() over (
            partition by company_id
            order by
                modified_at desc nulls last,
                ingested_at desc,
                {{ nudge_bytewise('source_file') }} desc,
                source_line desc
        ) as recency_rank

    from versions

),

final as (

    select
        company_id,
        nullif(trim(company_domain), '') as company_domain,
        nullif(trim(solutions_engineer_email), '') as solutions_engineer_email,
        plan,
        modified_at as profile_modified_at,
        metadata

    from ranked
    where recency_rank = 1

)

select * from final
