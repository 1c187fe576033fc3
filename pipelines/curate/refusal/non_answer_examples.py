"""Training examples of non-answers for the answer-kind classifier (see examples.py): text in the answer's
place that neither does the task nor declines it. Acknowledgements, interjections, shrugs, pointers to
somewhere else, promises of a later answer, questions back with no content, stray punctuation or emoji."""

NON_ANSWERS = [
    # acknowledgements and thanks
    "Thanks.", "Thank you!", "Thanks a lot!", "Cheers!", "Many thanks.", "Thx", "ty", "Much appreciated.",
     "Noted.", "Got it.", "Understood.",
    "Roger that.", "Acknowledged.", "Received, thanks.", "OK.", "ok", "k", "kk", "Okay then.", "Alright.",
    "Sounds good.", "Sure thing.", "Cool.", "Nice one.", "Awesome!", "Great!", "Perfect.", "Lovely.",
    "Fair enough.", "Good to know.", "Right.", "Yep, noted.", "Will do.", "On it.", "No worries!",
       "Good point.",
    # interjections and shrugs
    "hmm", "Hmmm...", "uh", "umm", "Er...", "meh", "lol", "haha", "lmao", "ugh", "oops", "wow", "Oh.",
    "idk", "dunno", "no idea", "No clue.", "Beats me.", "Who knows?", "Good question...", "*shrug*",
    "¯\\_(ツ)_/¯", "Not sure tbh.", "I dunno, whatever.", "Eh, could be anything.", "Hard to say really.",
    "No idea, sorry lol.", "Couldn't tell you.", "Your guess is as good as mine.", "Whatever you like.",
    "Up to you.", "Anything is fine.", "Doesn't matter.", "Same difference.", "It is what it is.",
    # stray punctuation and emoji
    "?", "??", "...", "!", "-", ".", "😊", "🙂", "👌", "🤷", "👍👍", "😂😂", "🙏", ":)", ":-)", "^^", "+1",
    # pointers to somewhere else, with nothing of the answer
    "See above.", "See below.", "As above.", "Same as above.", "Same as last time.", "Refer to my earlier reply.",
    "Check the previous message.", "Already answered.", "I answered this before.", "See my other answer.",
    "Scroll up.", "Read the manual.", "RTFM.", "Check the docs.", "It's in the docs.", "Google it.",
    "Just google it.", "Search online.", "Look it up on Wikipedia.", "Ask your teacher.", "Ask a friend.",
    "Ask on Stack Overflow.", "Try Reddit.", "Watch a tutorial.", "There's a video about it somewhere.",
    "Plenty of guides out there.", "The answer is on the internet.", "Check the FAQ.", "See the link.",
    "See attached.", "Link in bio.", "Details in the thread.", "Covered earlier in this chat.",
    # promises of a later answer
    "I'll get to it later.", "Will answer tomorrow.", "Give me a minute.", "Hold on.", "One sec.", "brb",
    "Let me check and get back to you.", "I'll think about it.", "Working on it.", "Coming up!",
    "I'll send it over later.", "Remind me next week.", "Later.", "Not now, maybe later.",
    "I'll have a look when I have time.", "Stay tuned.",
    # questions back, or talk about the question, with no content
    "What do you mean?", "Why do you ask?", "Why?", "Huh?", "What?", "Really?", "Are you sure?",
    "Interesting question.", "That's a good question.", "What a question!", "Nice question.",
    "That's an interesting topic.", "So many possibilities!", "Where do I even start?",
    "That's a tough one.", "Tricky.", "Big question.", "Hmm, let me think.", "Let me think...",
    "Good luck!", "Have fun!", "Enjoy!", "Best of luck with it.", "You'll figure it out.", "You got this!",
    "Done.", "Finished.", "Here you go.", "Here it is.", "Sent!", "Posted.", "There.", "Ta-da!",
    "As requested.", "Completed as requested.", "See the result.", "Output attached.",
]
