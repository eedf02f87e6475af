{#
    Calls per company and user over a window (nudge_window / nudge_window_between), for company
    cohorts. Calls of identified users only (events without a user_id belong to no one, as in the
    daily rollups), attributed to the company on the event, else the company on the user's
    profile. Whole UTC days come from fct_user_daily_activity, the partial edge days from the
    events themselves, as the seed cohorts do.

    Columns: company_id, user_id, api_calls, calls_401, calls_403 (company_id never null).
#}

{% macro nudge_company_user_calls(window) -%}
    select
        coalesce(calls.company_id, users.company_id) as company_id,
        calls.user_id,
        {{ dbt.cast('sum(calls.api_calls)', dbt.type_bigint()) }} as api_calls,
        {{ dbt.cast('sum(calls.calls_401)', dbt.type_bigint()) }} as calls_401,
        {{ dbt.cast('sum(calls.calls_403)', dbt.type_bigint()) }} as calls_403

    from (

        select user_id, company_id, api_calls, calls_401, calls_403
        from {{ ref('fct_user_daily_activity') }}
        where {{ nudge_in_window_full_days('activity_date', window) }}

        union all

        select
            user_id,
            company_id,
            1 as api_calls,
            case when status_code = 401 then 1 else 0 end as calls_401,
            case when status_code = 403 then 1 else 0 end as calls_403
        from {{ ref('stg_moesif__events') }}
        where user_id is not null
            and {{ nudge_in_window_edges('requested_at', window) }}

    ) as calls

    left join {{ ref('dim_users') }} as users
        on users.user_id = calls.user_id

    where coalesce(calls.company_id, users.company_id) is not null
    group by coalesce(calls.company_id, users.company_id), calls.user_id
{%- endmacro %}


{% macro nudge_plan_quota(plan_column) -%}
    {#- The monthly call quota of a plan from the var quota_calls_per_month_by_plan
        ({plan: calls}, set by the operator; empty by default); null for a plan it does not
        list. -#}
    {%- set quotas = var('quota_calls_per_month_by_plan', {}) or {} -%}
    {%- if quotas is not mapping -%}
        {{ exceptions.raise_compiler_error(
            "dbt var quota_calls_per_month_by_plan: expected a mapping {plan: calls per month}") }}
    {%- endif -%}
    {%- if quotas | length == 0 -%}
        cast(null as bigint)
    {%- else -%}
        case {{ plan_column }}
        {%- for plan, calls in quotas | dictsort %}
            {%- if calls is boolean or calls is not number or calls != calls | int or calls <= 0 -%}
                {{ exceptions.raise_compiler_error(
                    "dbt var quota_calls_per_month_by_plan: the quota of " ~ plan ~ " must be a whole number > 0, got " ~ calls) }}
            {%- endif -%}
            {%- if not modules.re.match('^[A-Za-z0-9_ -]+$', plan | string) -%}
                {{ exceptions.raise_compiler_error(
                    "dbt var quota_calls_per_month_by_plan: plan name " ~ plan ~ " must be letters, digits, _, - or space") }}
            {%- endif %}
            when '{{ plan }}' then cast({{ calls | int }} as bigint)
        {%- endfor %}
        end
    {%- endif -%}
{%- endmacro %}


{% macro nudge_quota_usage() -%}
    {#- One row per company with a quota (metadata.quota_calls_per_month, else the quota the
        operator configured for its plan in the var; never a guess): the calls of this calendar month so far (nudge_month_window), the share of
        the quota used in whole percent (rounded down), and when the count starts again. -#}
    {%- set month = nudge_month_window() -%}
    {%- set last = nudge_as_of_datetime() - modules.datetime.timedelta(microseconds=1) -%}
    {%- set next_month = modules.datetime.datetime(last.year, last.month, 28) + modules.datetime.timedelta(days=4) -%}
    {%- set resets_at = modules.datetime.datetime(next_month.year, next_month.month, 1) -%}
    with

    companies as (

        select
            company_id,
            company_domain,
            plan,
            solutions_engineer_email,
            coalesce(quota_calls_per_month, {{ nudge_plan_quota('plan') }}) as quota_calls_per_month,
            case when quota_calls_per_month is not null then 'metadata' else 'plan' end as quota_source
        from {{ ref('dim_companies') }}

    ),

    calls as (

        select company_id, {{ dbt.cast('sum(api_calls)', dbt.type_bigint()) }} as calls_this_month
        from ({{ nudge_company_user_calls(month) }}) as by_user
        group by company_id

    )

    select
        companies.company_id,
        companies.company_domain,
        companies.plan,
        companies.solutions_engineer_email,
        companies.quota_calls_per_month,
        companies.quota_source,
        coalesce(calls.calls_this_month, 0) as calls_this_month,
        cast(floor(100.0 * coalesce(calls.calls_this_month, 0) / companies.quota_calls_per_month) as bigint)
            as quota_used_pct,
        {{ month.start }} as month_start,
        {{ nudge_timestamp_literal(resets_at) }} as resets_at,
        {{ month.end }} as window_end

    from companies
    left join calls on calls.company_id = companies.company_id
    where companies.quota_calls_per_month > 0
{%- endmacro %}
