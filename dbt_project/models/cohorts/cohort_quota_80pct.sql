-- Companies that have used at least quota_warning_pct (80) percent of their monthly call quota
-- this calendar month, and less than quota_exceeded_pct (100): a heads-up before the limit.
-- The quota is metadata.quota_calls_per_month, else the per-plan quota the operator set in the
-- var quota_calls_per_month_by_plan (empty by default: no guessed quota; see
-- macros/nudge_company_calls.sql). A company with neither is in no quota cohort. A company that crosses 100%
-- leaves this cohort and enters cohort_quota_100pct; a new month starts again from zero.

{%- set warning_pct = nudge_int_var('quota_warning_pct', 1) %}
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
        quota_calls_per_month - calls_this_month as calls_left,
        month_start,
        resets_at,
        window_end

    from usage
    where calls_this_month * 100 >= {{ warning_pct }} * quota_calls_per_month
        and calls_this_month * 100 < {{ exceeded_pct }} * quota_calls_per_month

)

select * from final
