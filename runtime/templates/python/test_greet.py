import unittest

import greet


class GreetTest(unittest.TestCase):
    def test_greets_as_often_as_asked(self):
        self.assertEqual(
            greet.greet(greet.Input(name="Ada", times=2)),
            {"greeting": "hello, Ada hello, Ada"},
        )

    def test_an_empty_name_is_fatal(self):
        with self.assertRaisesRegex(greet.Fatal, "name is empty"):
            greet.greet(greet.Input(name=" "))

    def test_the_schema_requires_a_name(self):
        self.assertEqual(greet.INPUT_SCHEMA["required"], ["name"])


if __name__ == "__main__":
    unittest.main()
