with

companies as (

    select * from {{ ref('int_companies_latest') }}

)

select
    company_id,
    company_domain,
    solutions_engineer_email,
    plan,
    profile_modified_at,
    metadata

from companies
