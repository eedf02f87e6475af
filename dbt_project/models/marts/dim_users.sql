with

users as (

    select * from {{ ref('int_users_latest') }}

)

select
    user_id,
    company_id,
    email,
    first_name,
    last_name,
    signup_at,
    signup_source,
    profile_modified_at,
    profile_versions,
    metadata

from users
