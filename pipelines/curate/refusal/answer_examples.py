"""Training examples of answers that do the task, for the answer-kind classifier (see examples.py): short
answers to closed questions, and answers that open like a refusal or boilerplate and then answer.

A closed question is answered in a word, a number or a phrase; the classifier must tell these from
non-answers ("ok", "see above") and refusals, so they are answers however short.
"""

SHORT_ANSWERS = [
    # numbers, quantities, dates
    "42", "7", "0", "-3", "3.14", "1,250", "12.5%", "about 8 minutes", "roughly 384,400 km", "1969",
    "July 4, 1776", "In 1492.", "2.54 cm", "100 °C", "37 degrees", "9.81 m/s²", "£4.50", "$120", "24 hours",
    "Three.", "Twelve", "Eleven players.", "Four: spring, summer, autumn and winter.", "x = 4", "2, 3, 5, 7",
    "The answer is 81.", "It comes to 15.", "0.75", "1/3", "About 60 kg.", "206 bones.", "8 planets",
    # names, places, people, things
    "Canberra.", "Lisbon", "Mount Everest.", "The Nile.", "Pacific Ocean", "Leonardo da Vinci.",
    "Marie Curie", "Jane Austen.", "Shakespeare wrote it.", "Neil Armstrong", "Albert Einstein.", "Oxygen.",
    "Helium", "Carbon dioxide.", "The heart.", "Photosynthesis.", "Mercury", "Jupiter.", "Saturn", "Venus.",
    "The euro.", "Japanese yen", "Spanish.", "Portuguese", "Mandarin Chinese.", "Python", "JavaScript.",
    "Git", "Linux.", "HTTP", "A compiler.", "A noun.", "An adjective.", "A verb", "Au", "H2O", "NaCl",
    "The mitochondria.", "Insulin", "Penicillin.", "The Beatles.", "Monet", "Mozart.", "Tokyo Tower",
    # yes / no / true / false / choices
    "Yes.", "No.", "Yes", "No", "yes", "no", "True.", "False.", "True", "False", "Correct.", "Incorrect.",
    "Yes, it is.", "No, it isn't.", "Yes, they can.", "No, they can't.", "Definitely yes.", "Not at all.",
    "A", "B", "C", "D", "Option B.", "The second one.", "(c)", "Both.", "Neither.", "The first.",
    # labels, classifications, single words asked for
    "Positive.", "Negative", "Neutral.", "Spam", "Not spam.", "Formal", "Informal.", "Sarcastic.", "Urgent",
    "Sports.", "Politics", "Technology.", "Mammal.", "Reptile", "Fruit.", "Vegetable", "Noun", "Past tense.",
    "Happy.", "Joyful", "Large", "Tiny.", "Ancient", "Brave.", "Quickly", "Went.", "Children.", "Geese",
    "Ran", "Better.", "Fast", "Cold.", "Calm", "Ocean", "Spring.", "Blue", "Red.", "Green",
    # translations and words in other forms
    "Gracias.", "Merci.", "Bonjour", "Hola", "Danke schön.", "Arrivederci", "Obrigado.", "Gato",
    "le chien", "die Katze", "el libro", "la maison", "Guten Morgen.", "Buona notte.", "Adiós",
    "'Thank you' in German is 'Danke'.", "In French it's 'pomme'.", "Hund", "Wasser", "Libro",
    # short phrases and one-line results
    "Paris is the capital of France.", "It's the largest desert in Africa.", "Water freezes at 0 °C.",
    "Because the Earth is tilted.", "By adding salt.", "At sea level, yes.", "Every four years.",
    "Use len(my_list).", "`git status`", "print('Hello')", "SELECT COUNT(*) FROM users;", "`ls -la`",
    "Ctrl+C", "Press F5.", "Use a semicolon.", "Lower case.", "Sorted: 1, 4, 9, 16.", "apple, banana, cherry",
    "Subject: Meeting moved to 3 pm", "Title: The Last Lighthouse", "#SummerVibes", "Slow and steady.",
    "The cat sat on the mat.", "She went to the market.", "They're going home.", "Its colour is red.",
    "Mon, Wed, Fri.", "North-east.", "Left.", "Upstairs.", "Tomorrow.", "Never.", "Always.", "Twice a day.",
    "Roughly twice as fast.", "Much larger.", "The same size.", "Half.", "Double it.", "Add them.",
]

# Answers that open like boilerplate or a refusal (a pleasantry, a caveat, "it depends", "I can't ...") and
# then do the task: the opening is not the answer's whole content
HEDGED_ANSWERS = [
    "Great question! Bees dance to tell each other where flowers are: the angle of the waggle run gives the direction relative to the sun, and its length gives the distance.",
    "Sure! Here's a packing list for a weekend hike: rain jacket, warm layer, map and compass, head torch, first-aid kit, 2 litres of water, snacks, sun cream.",
    "Happy to help. To reset a router, hold the reset button for 10 seconds with a paperclip, wait for the lights to settle, then log in with the password on the sticker.",
    "Thanks for the question. Tides are caused mostly by the Moon's gravity pulling on the oceans, with the Sun adding a smaller pull; most coasts get two high tides a day.",
    "It depends on the pan, but for a steak 3 cm thick, sear it 3 minutes a side on high heat, then rest it 5 minutes; that gives medium-rare.",
    "It really depends on your budget, but I'd go for the used Corolla-class hatchback with a full service history over a newer car with an unknown past.",
    "There are many factors, but the three that move house prices most are interest rates, local wages and how much new housing gets built.",
    "Opinions vary, but I think the strongest case is for the bus: it costs a quarter of the taxi and takes only ten minutes longer.",
    "I can't know your exact situation, but most people pay off the highest-interest debt first (the avalanche method), because it costs least overall.",
    "I'm not a mechanic, but a squeal when braking usually means worn brake pads; they are cheap to replace, and worth doing soon.",
    "I don't have live prices, but last I knew a return train from London to Manchester booked a month ahead cost around 60 to 90 pounds.",
    "As an AI I can't taste food, but going by the chemistry, a pinch of salt in coffee reduces bitterness because sodium ions suppress bitter receptors.",
    "I'm sorry to hear about your plant. Yellow lower leaves usually mean overwatering: let the soil dry out between waterings and check the pot drains.",
    "Sorry for the delay. Here's the summary: sales rose 8% in the quarter, costs rose 3%, and the company raised its forecast for the year.",
    "Apologies, I misread your question. You asked for the median, not the mean: the median of 4, 8, 15, 16, 23 is 15.",
    "Unfortunately there's no shortcut, but a good plan is 30 minutes of vocabulary with flashcards each day and one conversation class a week.",
    "No worries. Here's the corrected sentence: 'Neither of the answers is correct.'",
    "Not quite: a tomato is a fruit botanically, because it develops from the flower and holds seeds.",
    "No, you don't need a visa for a short stay; citizens of the EU can visit for up to 90 days in any 180.",
    "Not exactly. Correlation means two things move together; causation means one makes the other happen, which needs a controlled comparison to show.",
    "Never use water on a grease fire. Turn off the heat and cover the pan with a lid or a damp tea towel to starve the fire of oxygen.",
    "You can't divide by zero, so the function should check for an empty list first: if not numbers: return 0.",
    "Cannot is usually written as one word in British and American English; 'can not' appears only when 'not' belongs to what follows.",
    "Please note the oven must be preheated. Bake the cake at 180 C for 25 minutes, until a skewer comes out clean.",
    "Disclaimer: figures are approximate. A 4 kW solar system in the UK produces about 3,400 kWh a year, roughly what a typical house uses.",
    "Of course. Here's a limerick:\nA baker from Bude in the west\nmade scones that were simply the best;\nhe'd knead them all day,\nthen give them away,\nand keep just a crumb for a guest.",
    "Certainly. The main causes of the French Revolution were a financial crisis, bread shortages, resentment of the nobility's privileges, and Enlightenment ideas about rights.",
    "Good question. A vaccine is approved after three phases of trials, on safety, dose and effectiveness, and a review of all the data by a regulator such as the FDA or EMA.",
    "I hope this is what you wanted: def mean(xs): return sum(xs) / len(xs) if xs else 0.0",
    "Let me know if this fits: 'Data analyst turning messy spreadsheets into clear decisions | SQL, Python, Tableau'.",
    "I'd rather give you the honest answer than the popular one: for short trips a hybrid bike beats a road bike, because it is comfortable and carries luggage.",
    "I don't have a personal favourite, but critics most often rank 'Citizen Kane', 'Vertigo' and 'Tokyo Story' among the greatest films.",
    "Rather than one routine, here are three stretches runners swear by: a standing calf stretch, a kneeling hip-flexor lunge, and a lying hamstring stretch with a strap; hold each 30 seconds.",
    "My advice is to start small: automate one report first, measure the hours saved, and use that to argue for the bigger project.",
    "Policy-wise, most companies let you carry over five days of unused leave to the next year; check your contract for the exact rule.",
    "Refusing a job offer politely: 'Thank you for the offer and for your time. After careful thought, I have decided to accept another position. I hope our paths cross again.'",
    "The model in this experiment is a linear regression; its coefficient of 0.8 means each extra hour of study adds 0.8 points to the score.",
    "The assistant manager's duties include opening and closing the shop, training new staff and handling customer complaints.",
    "Help is spelt h-e-l-p; the past tense is helped.",
    "The question mark goes inside the quotation marks when the quotation is itself a question: She asked, 'Are you coming?'",
]
