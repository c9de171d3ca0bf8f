"""Realistic inputs per job, for the benchmarks that compare decoding or a peer on npud's own jobs.

Written to look like what the clients send: chat openings to title, mails and threads to
summarize, raw notifications to condense, chat turns that may hold facts about the user. The
benchmarks use the first few of each; studies of decoding settings use all of them.
"""

from __future__ import annotations

from typing import Final

INPUTS: Final[dict[str, tuple[str, ...]]] = {
    "title": (
        "How do I get my Python script to read a CSV file with semicolons as separators and "
        "convert the date column to real dates?",
        "My daughter's birthday party is on Saturday and I need ideas for games for ten "
        "seven-year-olds that work indoors if it rains.",
        "The VPN drops every twenty minutes on my work laptop since the last Windows update, "
        "but only when I'm on the home Wi-Fi.",
        "Can you explain the difference between a Roth IRA and a traditional IRA for someone "
        "who just started their first job?",
        "I want to start running again after a knee injury last year. What is a safe plan for "
        "the first month?",
        "Write a polite email to my landlord asking when the broken heating in the bedroom "
        "will be repaired; it has been three weeks.",
        "Our Kubernetes pods keep getting OOMKilled during the nightly batch job even though "
        "memory limits are set to 2 GiB.",
        "What should I pack for a week of hiking in the Scottish Highlands in late September?",
        "Help me compare two job offers: one pays more but has a long commute, the other is "
        "remote with a smaller salary.",
        "Why does my sourdough bread come out flat and dense even though the starter bubbles "
        "nicely?",
        "Summarize the main arguments for and against a four-day work week for a team "
        "meeting on Thursday.",
        "I need a SQL query that returns the top five customers by revenue for each region in "
        "2024.",
    ),
    "summary": (
        "Hi all, quick update on the office move. The movers come on Friday 14 March at 8:00. "
        "Please pack your desks by Thursday evening and label every box with your name and the "
        "new room number. IT will disconnect the monitors on Thursday at 17:00, so save your "
        "work before then. The new office on Harbour Street opens on Monday 17 March; parking "
        "passes are at reception. Questions go to Maria Lopez.",
        "The quarterly review covered three topics. Revenue grew 12 percent on the new "
        "subscription tier; the mobile release slips two weeks because of an App Store review; "
        "two support engineers will be hired before March. Tom will send the updated roadmap "
        "by Friday.",
        "Dear customer, your order #58213 (two pairs of running shoes, size 42) has been "
        "shipped with DHL. The tracking number is JD014600003. Delivery is expected between "
        "Wednesday and Thursday. If nobody is home, the parcel will be left at the Packstation "
        "on Main Street. Returns are free within 30 days.",
        "Minutes of the school board meeting: the board approved the new science lab budget of "
        "45,000 euros, with work starting in July. The proposal to move the start of classes to "
        "8:30 was postponed until the parents' survey is finished in May. Ms. Becker will "
        "organise the spring concert on 12 April.",
        "Hey, about the weekend: we're renting the cabin near Lake Tahoe from Friday to Sunday. "
        "It costs 540 dollars in total, so 135 each. Jake drives from San Francisco at 16:00 and "
        "has room for three. Bring sleeping bags, the cabin only has blankets. I'll buy "
        "groceries on Friday morning.",
        "Release notes for version 3.2: dark mode is now available on all platforms; exporting "
        "to PDF is twice as fast; the sync bug that duplicated calendar events on Android is "
        "fixed. Support for Windows 8 ends with this release. Version 3.3 is planned for June "
        "with offline mode.",
        "Your appointment with Dr. Sarah Klein at the City Dental Clinic is confirmed for "
        "Tuesday 22 October at 10:15. Please arrive ten minutes early and bring your insurance "
        "card. If you need to cancel, call 030 555 0199 at least 24 hours in advance, otherwise "
        "a fee of 40 euros applies.",
        "Team, the incident on Monday was caused by an expired TLS certificate on the payments "
        "gateway. Checkout failed for 47 minutes, affecting about 1,800 orders. We renewed the "
        "certificate at 11:32 and added monitoring that alerts 30 days before expiry. A full "
        "post-mortem will be shared on Wednesday.",
        "The city council announced that Elm Street will be closed to traffic from 3 June to 28 "
        "June for sewer repairs. Bus line 12 will be diverted via Oak Avenue. Residents can "
        "still reach their garages in the evening after 18:00. The council apologises for the "
        "inconvenience.",
        "Grandma called: she's coming to visit on the 20th and staying for a week. She arrives "
        "at the central station at 14:45 on the train from Munich. She asked if we could pick "
        "her up and said she'd bring her famous apple cake. She can't climb stairs well, so "
        "the guest room downstairs is best.",
        "Thanks for applying to the data analyst position at Northwind. We'd like to invite you "
        "to a 45-minute video interview with Priya Shah and Daniel Ortiz next week. Please pick "
        "a slot on Tuesday or Wednesday between 9:00 and 15:00 using the link below. The "
        "interview includes a short SQL exercise.",
        "Reminder from the gym: the pool will be closed for maintenance from 1 to 7 August. "
        "The sauna and all classes continue as usual. Members with a swim-only plan get one "
        "week added to their membership automatically. The new yoga schedule starts on 8 "
        "August.",
    ),
    "notification": (
        "Calendar: 'Design review - checkout flow' moved from Tue 14:00 to Wed 10:30, room "
        "Atlas 3. Organizer: Priya Shah. 6 guests.",
        "Slack #deployments: @dan deployed api-gateway v2.14.1 to production. Status: success. "
        "Duration 4m 12s. 0 errors.",
        "Your package from Amazon (order 113-4452190) is out for delivery and will arrive "
        "today between 14:00 and 18:00.",
        "Bank alert: a payment of 249.99 EUR to MediaMarkt Berlin was made with your card "
        "ending 4821 on 12 Nov at 18:42.",
        "GitHub: issue #1290 'Crash when opening settings on Android 14' was assigned to you "
        "by maria-k in repository acme/mobile-app.",
        "Weather warning: heavy snowfall expected in your area from 22:00 tonight until 09:00 "
        "tomorrow, 15 to 25 cm. Drive carefully.",
        "WhatsApp from Mom: Dinner on Sunday is at 6 instead of 7, Aunt Lisa is coming too. "
        "Can you bring the salad?",
        "Jira: PROJ-482 'Migrate billing to new API' changed status from In Progress to Code "
        "Review. Assignee: Tom Becker.",
        "Your flight LH 2034 from Munich to Hamburg on 3 Dec is delayed. New departure 19:55 "
        "(was 18:40). Gate K14.",
        "Google Drive: Anna Schmidt shared the spreadsheet 'Budget 2025 draft' with you and "
        "left a comment: 'Please check the travel line before Friday.'",
        "Disk space low on server db-prod-2: /var is 92% full (184 of 200 GB used). Threshold "
        "90%.",
        "Your library books 'The Overstory' and 'Project Hail Mary' are due in 2 days (Friday "
        "15 March). Renew online to avoid a fee.",
    ),
    "memory_candidate": (
        "I'm allergic to peanuts, so please keep that in mind when you suggest recipes. Also, "
        "I just moved to Rotterdam last month.",
        "Can you remind me how to reverse a list in Python?",
        "My wife and I are expecting our first child in April, and we're trying to pick a "
        "name. We both like short names.",
        "I work night shifts at the hospital on weekends, so I'm usually asleep until 2pm on "
        "Saturdays and Sundays.",
        "I prefer answers in bullet points and without emojis, please. I'm preparing for the "
        "AWS Solutions Architect exam in June.",
        "What's the weather usually like in Lisbon in October?",
        "I've been learning Japanese for two years and I'm going to Osaka for three weeks in "
        "November with my brother.",
        "My cat Miso has kidney problems, so she's on a special diet now. Do you know any good "
        "low-phosphorus treats?",
        "I run a small bakery in Leeds and I want to start selling online. I don't have much "
        "time for social media.",
        "Please always write code examples in TypeScript, that's what my team uses. We're "
        "migrating from Angular to React this quarter.",
        "Thanks, that worked! The build passes now.",
        "I'm training for the Berlin marathon in September; my goal is under four hours. I "
        "usually run in the mornings before work.",
    ),
}


def inputs(job: str, count: int) -> tuple[str, ...]:
    """The first ``count`` inputs of a job (all of them if it has fewer)."""
    return INPUTS[job][:count]
