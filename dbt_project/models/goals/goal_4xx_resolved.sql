-- A campaign goal (contract, "Holdouts and goals"): one row per user and day on which their
-- 7-day count of calls answered with a too_many_4xx_statuses status (400, 404, 405) fell below
-- too_many_4xx_threshold (1000), having been at or above it the day before. `converted_at` is
-- the end of that UTC day: the first evaluation instant whose whole-day window sees it below.
-- A user whose errors come back and fall again has one row per fall; the outcome models take
-- the first after each entry.

{%- set threshold = nudge_int_var('too_many_4xx_threshold', 1) %}

with

daily as (

    select
        user_id,
        {{ dbt.datediff("cast('1970-01-01' as date)", 'activity_date', 'day') }} as day_number,
        sum(calls) as calls

    from {{ ref('fct_user_daily_endpoint_status') }}
    where status_code in ({{ nudge_status_list('too_many_4xx_statuses') }})
    group by 1, 2

),

offsets as (

    {%- for k in range(8) %}
    select {{ k }} as k{{ ' union all' if not loop.last }}
    {%- endfor %}

),

-- The count can only change on a day with calls or 7 days after one: those are the candidates.
candidates as (

    select distinct daily.user_id, daily.day_number + offsets.k as day_number
    from daily cross join offsets

),

rolling as (

    select
        candidates.user_id,
        candidates.day_number,
        coalesce(sum(daily.calls), 0) as calls_7d

    from candidates
    left join daily
        on daily.user_id = candidates.user_id
        and daily.day_number between candidates.day_number - 6 and candidates.day_number
    group by 1, 2

),

resolved as (

    select
        today.user_id as entity_id,
        today.day_number

    from rolling as today
    inner join rolling as yesterday
        on yesterday.user_id = today.user_id and yesterday.day_number = today.day_number - 1
    where yesterday.calls_7d >= {{ threshold }} and today.calls_7d < {{ threshold }}

),

final as (

    select
        entity_id,
        {{ dbt.dateadd('day', 'day_number + 1', "cast('1970-01-01' as " ~ dbt.type_timestamp() ~ ")") }}
            as converted_at

    from resolved

)

select * from final
