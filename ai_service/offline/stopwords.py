"""English stopwords: the words that end a key phrase and carry no weight in a summary."""

from __future__ import annotations

# Function words (articles, pronouns, prepositions, conjunctions, auxiliaries, modals),
# their contractions, and the vaguest adverbs and nouns. Written for this project; sentiment
# words ("good", "loud") are kept out on purpose, since they make useful key phrases.
_LISTED = """
a about above across after afterwards again against all almost alone along already also
although always am among an and another any anybody anyone anything anyway anywhere are
aren't around as at be became because become becomes been before beforehand behind being
below beside besides between beyond both but by can can't cannot could couldn't did didn't
do does doesn't doing don't done down during each either else elsewhere enough etc even
ever every everybody everyone everything everywhere except few for former formerly from
further had hadn't has hasn't have haven't having he he'd he'll he's hence her here here's
hers herself him himself his how how's however i i'd i'll i'm i've ie if in indeed instead
into is isn't it it'd it'll it's its itself just least less let let's like likely may maybe
me meanwhile might mine more moreover most mostly much must mustn't my myself namely neither
never nevertheless next no nobody none noone nor not nothing now nowhere of off often on
once one ones only onto or other others otherwise ought our ours ourselves out over own
per perhaps please quite rather really said same say says shall shan't she she'd she'll
she's should shouldn't since so some somebody someone something sometime sometimes somewhat
somewhere still such than that that's the their theirs them themselves then thence there
there's thereafter thereby therefore therein these they they'd they'll they're they've
thing things this those though through throughout thru thus to together too toward towards
under unless until up upon us very via was wasn't we we'd we'll we're we've were weren't
what what's whatever when whence whenever where where's whereas wherever whether which
while who who's whoever whole whom whose why why's will with within without won't would
wouldn't yet you you'd you'll you're you've your yours yourself yourselves
also get gets got getting go goes going went gone lot lots way ways yes yeah ok okay oh
"""
STOPWORDS = frozenset(_LISTED.split())
