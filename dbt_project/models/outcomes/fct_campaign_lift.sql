-- Per campaign and entry week (Monday, UTC): conversion of the treatment and the holdout over
-- matured entries only (an entry whose goal window is still open could yet convert), the
-- absolute lift (treatment minus holdout) and its 95% confidence interval: Newcombe's hybrid
-- score interval (method 10 of Newcombe 1998), built from each group's Wilson score interval.
-- Unlike the normal approximation (Wald) it stays within [-1, 1] and keeps a width when a rate
-- is 0% or 100%, which small weekly groups often are. `significant` when the interval excludes
-- 0. Null where a group has no entry that week. email_jobs/report.py computes the same.

with

matured as (

    select
        campaign,
        cast({{ dbt.date_trunc('week', 'entered_at') }} as date) as entry_week,
        {{ adapter.quote('group') }} as entry_group,
        converted

    from {{ ref('fct_campaign_entries') }}
    where matured = 1 and {{ adapter.quote('group') }} is not null

),

counts as (

    select
        campaign,
        entry_week,
        sum(case when entry_group = 'treatment' then 1 else 0 end) as entries_treatment,
        sum(case when entry_group = 'holdout' then 1 else 0 end) as entries_holdout,
        sum(case when entry_group = 'treatment' then converted else 0 end) as conversions_treatment,
        sum(case when entry_group = 'holdout' then converted else 0 end) as conversions_holdout

    from matured
    group by 1, 2

),

rates as (

    select
        *,
        case when entries_treatment > 0
            then cast(conversions_treatment as {{ nudge_type_double() }}) / entries_treatment
        end as conversion_treatment,
        case when entries_holdout > 0
            then cast(conversions_holdout as {{ nudge_type_double() }}) / entries_holdout
        end as conversion_holdout

    from counts

),

wilson as (

    select
        *,
        {{ nudge_wilson_low('conversion_treatment', 'entries_treatment') }} as low_treatment,
        {{ nudge_wilson_high('conversion_treatment', 'entries_treatment') }} as high_treatment,
        {{ nudge_wilson_low('conversion_holdout', 'entries_holdout') }} as low_holdout,
        {{ nudge_wilson_high('conversion_holdout', 'entries_holdout') }} as high_holdout

    from rates

),

lift as (

    -- Each side of the difference takes the two groups' Wilson distances that push it that way.
    select
        *,
        conversion_treatment - conversion_holdout as lift,
        conversion_treatment - conversion_holdout - sqrt(
            (conversion_treatment - low_treatment) * (conversion_treatment - low_treatment)
            + (high_holdout - conversion_holdout) * (high_holdout - conversion_holdout)
        ) as lift_ci_low,
        conversion_treatment - conversion_holdout + sqrt(
            (high_treatment - conversion_treatment) * (high_treatment - conversion_treatment)
            + (conversion_holdout - low_holdout) * (conversion_holdout - low_holdout)
        ) as lift_ci_high

    from wilson

),

final as (

    select
        campaign,
        entry_week,
        cast(entries_treatment as {{ dbt.type_bigint() }}) as entries_treatment,
        cast(entries_holdout as {{ dbt.type_bigint() }}) as entries_holdout,
        cast(conversions_treatment as {{ dbt.type_bigint() }}) as conversions_treatment,
        cast(conversions_holdout as {{ dbt.type_bigint() }}) as conversions_holdout,
        conversion_treatment,
        conversion_holdout,
        lift,
        lift_ci_low,
        lift_ci_high,
        case
            when lift is null then null
            when lift_ci_low > 0 or lift_ci_high < 0 then true
            else false
        end as significant

    from lift

)

select * from final
