-- Companies whose calls were refused with 401/403 in a burst, or in a spike against their own
-- baseline, in the last api_misuse_window_days (default: the 24 hours before `end`):
--   burst: at least api_misuse_burst_calls refused calls (1000) in the window; or
--   spike: at least api_misuse_spike_min_calls (100), at least api_misuse_spike_factor (5) times
--          the company's own daily rate over the api_misuse_baseline_days (28) before the window,
--          and at least api_misuse_spike_min_share_pct (20) percent of its calls in the window,
--          so that a big account's routine trickle of expired tokens is not an alarm.
-- The email goes to the company's security contact (metadata.security_contact_email), else to
-- its solutions engineer; the solutions engineer is CC'd when the security contact is mailed.

{%- set window_days = nudge_int_var('api_misuse_window_days', 1) %}
{%- set baseline_days = nudge_int_var('api_misuse_baseline_days', 1) %}
{%- set burst_calls = nudge_int_var('api_misuse_burst_calls', 1) %}
{%- set spike_min_calls = nudge_int_var('api_misuse_spike_min_calls', 1) %}
{%- set spike_factor = nudge_int_var('api_misuse_spike_factor', 1) %}
{%- set spike_min_share_pct = nudge_int_var('api_misuse_spike_min_share_pct', 0) %}
{%- set top_users = nudge_int_var('api_misuse_top_users_limit', 1) %}
{%- set end = nudge_as_of_datetime() %}
{%- set window_start = end - modules.datetime.timedelta(days=window_days) %}
{%- set window = nudge_window_between(window_start, end) %}
{%- set baseline = nudge_window_between(window_start - modules.datetime.timedelta(days=baseline_days), window_start) %}

with

recent_by_user as (

    {{ nudge_company_user_calls(window) }}

),

baseline_by_user as (

    {{ nudge_company_user_calls(baseline) }}

),

recent as (

    select
        company_id,
        {{ dbt.cast('sum(api_calls)', dbt.type_bigint()) }} as api_calls,
        {{ dbt.cast('sum(calls_401)', dbt.type_bigint()) }} as calls_401,
        {{ dbt.cast('sum(calls_403)', dbt.type_bigint()) }} as calls_403,
        {{ dbt.cast('sum(calls_401 + calls_403)', dbt.type_bigint()) }} as refused_calls

    from recent_by_user
    group by company_id

),

baseline_totals as (

    select
        company_id,
        {{ dbt.cast('sum(calls_401 + calls_403)', dbt.type_bigint()) }} as baseline_refused_calls
    from baseline_by_user
    group by company_id

),

scored as (

    select
        recent.*,
        coalesce(baseline_totals.baseline_refused_calls, 0) as baseline_refused_calls,
        case
            when recent.refused_calls >= {{ burst_calls }} then 'burst'
            -- Rates compared without division: recent / window_days >= factor x baseline / baseline_days.
            when recent.refused_calls >= {{ spike_min_calls }}
                and recent.refused_calls * {{ baseline_days }}
                    >= {{ spike_factor }} * coalesce(baseline_totals.baseline_refused_calls, 0) * {{ window_days }}
                and recent.refused_calls * 100 >= {{ spike_min_share_pct }} * recent.api_calls
                then 'spike'
        end as trigger_kind

    from recent
    left join baseline_totals on baseline_totals.company_id = recent.company_id

),

flagged as (

    select * from scored where trigger_kind is not null

),

user_ranked as (

    select
        recent_by_user.company_id,
        recent_by_user.user_id,
        users.email as user_email,
        recent_by_user.calls_401 + recent_by_user.calls_403 as refused_calls,
        row_number() over (
            partition by recent_by_user.company_id
            order by
                recent_by_user.calls_401 + recent_by_user.calls_403 desc,
                {{ nudge_bytewise('recent_by_user.user_id') }}
        ) as refused_rank

    from recent_by_user
    inner join flagged on flagged.company_id = recent_by_user.company_id
    left join {{ ref('dim_users') }} as users on users.user_id = recent_by_user.user_id
    where recent_by_user.calls_401 + recent_by_user.calls_403 > 0

),

top_users as (

    select
        company_id,
        '[' || {{ dbt.listagg('user_object', "','", 'order by refused_rank') }} || ']'
            as top_users_json

    from (
        select
            company_id,
            refused_rank,
            '{"user_id":' || {{ nudge_json_string('user_id') }}
                || ',"email":' || {{ nudge_json_string('user_email') }}
                || ',"calls":' || {{ dbt.cast('refused_calls', dbt.type_string()) }}
                || '}' as user_object
        from user_ranked
        where refused_rank <= {{ top_users }}
    ) as user_objects
    group by company_id

),

final as (

    select
        flagged.company_id as entity_id,
        coalesce(companies.security_contact_email, companies.solutions_engineer_email) as email,
        case
            when companies.security_contact_email is not null
                then companies.solutions_engineer_email
        end as cc,
        case
            when companies.security_contact_email is not null then 'security_contact'
            when companies.solutions_engineer_email is not null then 'solutions_engineer'
        end as recipient_role,
        companies.company_domain,
        companies.plan,
        flagged.trigger_kind,
        flagged.refused_calls,
        flagged.calls_401,
        flagged.calls_403,
        flagged.api_calls,
        flagged.baseline_refused_calls,
        {{ baseline_days }} as baseline_days,
        coalesce(top_users.top_users_json, '[]') as top_users_json,
        {{ window.start }} as window_start,
        {{ window.end }} as window_end

    from flagged
    left join {{ ref('dim_companies') }} as companies on companies.company_id = flagged.company_id
    left join top_users on top_users.company_id = flagged.company_id

)

select * from final
