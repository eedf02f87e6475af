-- Per user and activity day: 4xx / 5xx calls that day and over the 7 days ending that day.

with

daily as (

    select
        user_id,
        activity_date,
        api_calls,
        calls_4xx,
        calls_5xx,
        {{ dbt.datediff("cast('1970-01-01' as date)", 'activity_date', 'day') }} as day_number

    from {{ ref('fct_user_daily_activity') }}

),

rolling as (

    select
        user_id,
        activity_date,
        api_calls,
        calls_4xx,
        calls_5xx,
        {%- for measure in ['api_calls', 'calls_4xx', 'calls_5xx'] %}
        cast(sum({{ measure }}) over (
            partition by user_id order by day_number
            range between 6 preceding and current row
        ) as {{ dbt.type_bigint() }}) as {{ measure }}_7d{{ ',' if not loop.last }}
        {%- endfor %}

    from daily

)

select * from rolling
