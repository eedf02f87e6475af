-- Companies that have used at least quota_exceeded_pct (100) percent of their monthly call quota
-- this calendar month (see cohort_quota_80pct for where the quota comes from).

{%- set exceeded_pct = nudge_int_var('quota_exceeded_pct', 1) %}

with

usage as (

    {{ nudge_quota_usage() }}

),

final as (

    select
        company_id as entity_id,
        {{ dbt.cast('null', dbt.type_string()) }} as email,
        solutions_engineer_email as cc,
        company_domain,
        plan,
        quota_calls_per_month,
        quota_source,
        calls_this_month,
        quota_used_pct,
        calls_this_month - quota_calls_per_month as calls_over,
        month_start,
        resets_at,
        window_end

    from usage
    where calls_this_month * 100 >= {{ exceeded_pct }} * quota_calls_per_month

)

select * from final
