with

companies as (

    select * from {{ ref('int_companies_latest') }}

),

with_metadata as (

    select
        *,
        nullif(trim({{ nudge_json_get('metadata', 'security_contact_email') }}), '')
            as security_contact_email_text,
        trim({{ nudge_json_get('metadata', 'quota_calls_per_month') }}) as quota_text

    from companies

)

select
    company_id,
    company_domain,
    solutions_engineer_email,
    plan,
    security_contact_email_text as security_contact_email,
    -- A whole number of calls, else null (a typo in the CRM must not break the build).
    case
        when {{ nudge_regex_matches('quota_text', '^[0-9]{1,15}$') }}
            then cast(quota_text as bigint)
    end as quota_calls_per_month,
    profile_modified_at,
    metadata

from with_metadata
