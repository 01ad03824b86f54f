int hello;
