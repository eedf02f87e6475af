-- Per campaign and entry week (Monday, UTC): conversion of the treatment and the holdout over
-- matured entries only (an entry whose goal window is still open could yet convert), the
-- absolute lift (treatment minus holdout) and its 95% confidence interval: the normal
-- approximation of the difference of two independent proportions (Wald). `significant` when the
-- interval excludes 0. Null where a group has no entry that week.

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

lift as (

    select
        *,
        conversion_treatment - conversion_holdout as lift,
        sqrt(
            conversion_treatment * (1 - conversion_treatment) / entries_treatment
            + conversion_holdout * (1 - conversion_holdout) / entries_holdout
        ) as lift_se

    from rates

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
        lift - 1.959963984540054 * lift_se as lift_ci_low,
        lift + 1.959963984540054 * lift_se as lift_ci_high,
        case
            when lift is null then null
            when lift - 1.959963984540054 * lift_se > 0
                or lift + 1.959963984540054 * lift_se < 0 then true
            else false
        end as significant

    from lift

)

select * from final
